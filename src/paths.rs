//! Every default location of endorm on this machine, per the `directories` conventions of each OS:
//! the config file, the model directory and default model, the runtime directory with the default
//! socket and token file, and the environment variables that move them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use directories::ProjectDirs;

/// The file name of the default model, SmolLM2-135M-Instruct (installed by `endorm pull`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The id the default model is served under.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// Names the model directory instead of the default one.
pub const MODEL_DIR_ENV: &str = "ENDORM_MODEL_DIR";

/// Names the daemon's socket, for the daemon and for every client (the Python, Neovim and VS Code
/// plugins read it too). Empty counts as unset; the path is taken as it is (no `~`).
pub const SOCKET_ENV: &str = "ENDORM_SOCKET";

fn project() -> Option<ProjectDirs> {
    ProjectDirs::from("", "", "endorm")
}

/// The default config file: `<config dir>/endorm/config.toml` (`~/.config/endorm/config.toml` on
/// Linux, `~/Library/Application Support/endorm/config.toml` on macOS).
pub fn config_file() -> Option<PathBuf> {
    project().map(|p| p.config_dir().join("config.toml"))
}

/// Where models are installed: `$ENDORM_MODEL_DIR`, else `<cache dir>/endorm/models`
/// (`~/.cache/endorm/models` on Linux, `~/Library/Caches/endorm/models` on macOS).
pub fn model_dir() -> Option<PathBuf> {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => project().map(|p| p.cache_dir().join("models")),
    }
}

/// The default model's path (which may not exist yet).
pub fn default_model() -> Option<PathBuf> {
    model_dir().map(|dir| dir.join(DEFAULT_MODEL_FILE))
}

/// The per-user runtime directory of endorm: `$XDG_RUNTIME_DIR/endorm`, else the `directories`
/// per-user cache directory (where the OS has no runtime directory, e.g. macOS).
pub fn runtime_dir() -> Option<PathBuf> {
    let project = project()?;
    Some(
        project
            .runtime_dir()
            .map_or_else(|| project.cache_dir().to_owned(), Path::to_owned),
    )
}

/// `<runtime dir>/endorm.sock`: the socket when nothing names another.
pub fn default_socket() -> Option<PathBuf> {
    runtime_dir().map(|dir| dir.join("endorm.sock"))
}

/// `<runtime dir>/token`: the TCP bearer token's file when the config names no other.
pub fn default_token_file() -> Option<PathBuf> {
    runtime_dir().map(|dir| dir.join("token"))
}

/// `<socket>.url`: the lens's address, token included, which the daemon on `socket` writes (0600)
/// while it serves the page on TCP, for `endorm open` to read; removed when it stops.
pub fn lens_url_file(socket: &Path) -> PathBuf {
    beside(socket, ".url")
}

/// `<socket>.open.html`: the page `endorm open` hands a browser, which sends it on to the lens's
/// address, so the token is in no command line (a browser's is readable by other users in `ps`).
pub fn lens_open_file(socket: &Path) -> PathBuf {
    beside(socket, ".open.html")
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The socket the daemon listens on: `--socket` (`flag`), else `$ENDORM_SOCKET`, else the config's
/// `[server] socket` (`configured`), else [`default_socket`]. The environment variable comes before
/// the config because the clients read it and never the config: a daemon and a client started in
/// the same environment then meet.
pub fn socket(flag: Option<&Path>, configured: Option<&Path>) -> Option<PathBuf> {
    choose_socket(
        flag,
        std::env::var_os(SOCKET_ENV),
        configured,
        default_socket,
    )
}

fn choose_socket(
    flag: Option<&Path>,
    env: Option<OsString>,
    configured: Option<&Path>,
    default: impl FnOnce() -> Option<PathBuf>,
) -> Option<PathBuf> {
    flag.map(Path::to_owned)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| configured.map(Path::to_owned))
        .or_else(default)
}

/// The id a model file is served under: its file name, lower-cased, without `.gguf` and without a
/// quantisation suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct`).
pub fn model_id(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let is_quantisation = |suffix: &str| {
        let upper = suffix.to_ascii_uppercase();
        ["Q", "F", "BF", "IQ"].iter().any(|p| upper.starts_with(p))
            && suffix.chars().any(|c| c.is_ascii_digit())
            && suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let name = match stem.rsplit_once('.') {
        Some((name, suffix)) if is_quantisation(suffix) => name,
        _ => stem.as_str(),
    };
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_drop_extension_and_quantisation() {
        assert_eq!(
            model_id(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            DEFAULT_MODEL_ID
        );
        assert_eq!(
            model_id(Path::new("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")),
            "qwen2.5-coder-0.5b-instruct"
        );
        assert_eq!(model_id(Path::new("gemma-3-270m.gguf")), "gemma-3-270m");
        assert_eq!(model_id(Path::new("model-v1.5.gguf")), "model-v1.5");
    }

    #[test]
    fn the_socket_is_the_flag_then_the_environment_then_the_config_then_the_default() {
        let default = || Some(PathBuf::from("/run/default.sock"));
        let flag = Some(Path::new("/flag.sock"));
        let env = || Some(OsString::from("/env.sock"));
        let configured = Some(Path::new("/config.sock"));
        let pick = |flag, env, configured| {
            choose_socket(flag, env, configured, default)
                .unwrap()
                .display()
                .to_string()
        };
        assert_eq!(pick(flag, env(), configured), "/flag.sock");
        assert_eq!(pick(None, env(), configured), "/env.sock");
        assert_eq!(pick(None, None, configured), "/config.sock");
        assert_eq!(pick(None, None, None), "/run/default.sock");
        // An empty variable is unset, as the plugins read it.
        assert_eq!(
            pick(None, Some(OsString::new()), configured),
            "/config.sock"
        );
        // Taken as it is, as the plugins take it.
        assert_eq!(pick(None, Some("~/e.sock".into()), None), "~/e.sock");
    }

    #[test]
    fn defaults_live_in_the_project_directories() {
        if let (Some(socket), Some(token), Some(dir)) =
            (default_socket(), default_token_file(), runtime_dir())
        {
            assert_eq!(socket, dir.join("endorm.sock"));
            assert_eq!(token, dir.join("token"));
        }
        if let Some(config) = config_file() {
            assert!(config.ends_with("endorm/config.toml"), "{config:?}");
        }
    }
}
