//! The daemon's TOML config: `[server]`, `[defaults]` and named `[models.NAME]` entries.
//!
//! The file lives in the `directories` config location (`~/.config/endorm/config.toml` on Linux,
//! `~/Library/Application Support/endorm/config.toml` on macOS) unless `--config` names another.
//! `config/endorm.toml` in the repository documents every key. With no file at all the daemon
//! serves the default model (or `--model PATH`) with [`ModelSettings::BUILT_IN`]. Default
//! locations are in [`crate::paths`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog;
pub use crate::engine::ModelSettings;
use crate::engine::WorkerSettings;
use crate::paths;
pub use settings::ModelConfig;
use settings::{check_merged, check_settings};

mod settings;

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config {}: {error}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("the config {} is not valid: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser says, with line and column.
        message: String,
    },
    /// The values are inconsistent.
    #[error("the config {} is not valid: {message}", path.display())]
    Invalid {
        /// The config file (or `<command line>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the daemon listens, and its request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Settings every model gets unless its own entry says otherwise.
    #[serde(default)]
    pub defaults: ModelSettings,
    /// The models to serve, by id.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The Unix socket [default: `$XDG_RUNTIME_DIR/endorm/endorm.sock`]. Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// A loopback TCP address to serve as well, e.g. `127.0.0.1:8765` (bearer token required).
    /// Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The file holding the TCP bearer token [default: `token` beside the default socket].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// How TCP requests authenticate: `"token"` (a bearer token) or `"none"` (anyone who can
    /// connect, e.g. OpenRLHF, which sends no `Authorization`). Read at start only.
    pub auth: Auth,
    /// Allow `listen` on an address other hosts can reach. Read at start only.
    pub allow_remote: bool,
    /// Serve the lens, the page at `GET /` (docs/SERVER.md); off, `/` is an unknown route.
    /// Read at start only.
    pub web: bool,
    /// The model requests without `model` go to [default: the default model's id if served, else
    /// the first id in alphabetical order].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most candidates (documents, queries) in one request (400 above).
    pub max_candidates: usize,
    /// Most tokens in one request, context and candidates together (422 above).
    pub max_tokens: usize,
    /// Most tokens one job decodes on a model's worker (its context and candidates; per item for
    /// routes that queue one job per item), so that no single job holds the worker for long
    /// (413 above).
    pub max_job_tokens: usize,
    /// Requests that may wait for a model while it runs one (503 + Retry-After above).
    pub queue_depth: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Seconds a client may take to send a request's head once its first byte arrived (the
    /// connection is closed after). Read at start only.
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request's body (408 after). Read at start only.
    pub body_timeout_secs: u64,
    /// Seconds a kept-alive connection may stay idle between requests. Read at start only.
    pub idle_timeout_secs: u64,
    /// Open connections per listener (Unix socket, TCP); one more is answered 503 and closed.
    /// Read at start only.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: None,
            listen: None,
            token_file: None,
            auth: Auth::Token,
            allow_remote: false,
            web: true,
            default_model: None,
            max_body_bytes: 8 << 20,
            max_candidates: 128,
            max_tokens: 65_536,
            max_job_tokens: 16_384,
            queue_depth: 64,
            shutdown_grace_secs: 30,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 256,
        }
    }
}

/// How TCP requests authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// `Authorization: Bearer TOKEN`, the token from the token file.
    #[default]
    Token,
    /// No authentication.
    None,
}

/// What `endorm serve`'s command line sets over the config file (kept across reloads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--model PATH`: served beside the config's models, and the default model.
    pub model: Option<PathBuf>,
    /// `--n-ctx`, `--threads`, `--n-batch`, `--n-gpu-layers`, `--rpc`: over every model's settings.
    pub settings: ModelSettings,
}

/// One model to serve, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id requests name it by.
    pub id: String,
    /// What the worker loads and how.
    pub worker: WorkerSettings,
    /// The configured principle.
    pub principle: Option<String>,
    /// The configured reference model's id.
    pub reference_model: Option<String>,
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for model in config.models.values_mut() {
            model.path = match catalog::lookup(&model.path) {
                // A catalogue name (`path = "qwen2.5-coder-0.5b"`), unless a file of that name is
                // beside the config.
                Some(entry) if !base.join(&model.path).exists() => entry
                    .path()
                    .unwrap_or_else(|| resolve_path(&model.path, base)),
                _ => resolve_path(&model.path, base),
            };
        }
        for file in [&mut config.server.socket, &mut config.server.token_file]
            .into_iter()
            .flatten()
        {
            *file = resolve_path(file, base);
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the values that TOML types cannot: [`Config::validate_with`] no command line.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_with(&ModelSettings::default())
    }

    /// Checks the values that TOML types cannot, with `overrides` (`endorm serve`'s per-model
    /// flags) over every model: each value on its own, then what each model gets in the end
    /// (settings that contradict each other, or one that would silently do nothing).
    pub fn validate_with(&self, overrides: &ModelSettings) -> Result<(), String> {
        let server = &self.server;
        for (name, value) in [
            ("max_body_bytes", server.max_body_bytes),
            ("max_candidates", server.max_candidates),
            ("max_tokens", server.max_tokens),
            ("max_job_tokens", server.max_job_tokens),
            ("queue_depth", server.queue_depth),
            ("max_connections", server.max_connections),
            ("header_timeout_secs", server.header_timeout_secs as usize),
            ("body_timeout_secs", server.body_timeout_secs as usize),
            ("idle_timeout_secs", server.idle_timeout_secs as usize),
        ] {
            if value == 0 {
                return Err(format!("[server] {name} must be at least 1"));
            }
        }
        if let Some(listen) = server.listen {
            check_listen(listen, server.allow_remote)?;
        }
        check_settings("the command line", overrides)?;
        check_settings("[defaults]", &self.defaults)?;
        for (id, model) in &self.models {
            check_id(id)?;
            check_settings(&format!("[models.{id}]"), &model.settings)?;
            if let Some(reference) = &model.reference_model {
                if !self.models.contains_key(reference) {
                    return Err(format!(
                        "[models.{id}] reference_model = {reference:?} is not one of the models: {}",
                        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        let flags = if overrides.is_empty() {
            ""
        } else {
            " (with the command line's flags)"
        };
        check_merged(
            &format!("[defaults]{flags}"),
            &ModelSettings::merged(&[overrides, &self.defaults]),
        )?;
        for (id, model) in &self.models {
            check_merged(
                &format!("[models.{id}]{flags}"),
                &ModelSettings::merged(&[overrides, &model.settings, &self.defaults]),
            )?;
        }
        if let Some(default) = &server.default_model {
            if !self.models.is_empty() && !self.models.contains_key(default) {
                return Err(format!(
                    "[server] default_model = {default:?} is not one of the models: {}",
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The models to serve. `overrides.model` (`serve --model PATH`) is served too, under its
    /// file's id; with neither models in the file nor `--model`, the installed default model is.
    /// Every model gets `overrides.settings` over its entry over `[defaults]`.
    pub fn model_specs(&self, overrides: &Overrides) -> Vec<ModelSpec> {
        let mut specs: Vec<ModelSpec> = self
            .models
            .iter()
            .map(|(id, model)| {
                let mut spec = self.spec(
                    id,
                    &model.path,
                    &[&overrides.settings, &model.settings, &self.defaults],
                    model.chat_template.clone(),
                );
                spec.reference_model = model.reference_model.clone();
                spec
            })
            .collect();
        let fallback = match &overrides.model {
            Some(path) => Some(path.to_owned()),
            None if specs.is_empty() => paths::default_model(),
            None => None,
        };
        if let Some(path) = fallback {
            let id = paths::model_id(&path);
            specs.retain(|spec| spec.id != id);
            specs.push(self.spec(&id, &path, &[&overrides.settings, &self.defaults], None));
        }
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs
    }

    /// The id requests without `model` go to, among `specs`.
    pub fn default_model_id(
        &self,
        specs: &[ModelSpec],
        cli_model: Option<&Path>,
    ) -> Option<String> {
        let served = |id: &str| specs.iter().any(|s| s.id == id);
        cli_model
            .map(paths::model_id)
            .filter(|id| served(id))
            .or_else(|| self.server.default_model.clone().filter(|id| served(id)))
            .or_else(|| Some(paths::DEFAULT_MODEL_ID.to_owned()).filter(|id| served(id)))
            .or_else(|| specs.first().map(|s| s.id.clone()))
    }

    fn spec(
        &self,
        id: &str,
        path: &Path,
        layers: &[&ModelSettings],
        chat_template: Option<String>,
    ) -> ModelSpec {
        let settings = ModelSettings::merged(layers);
        ModelSpec {
            id: id.to_owned(),
            principle: settings.principle.clone(),
            worker: WorkerSettings {
                path: path.to_owned(),
                chat_template,
                settings,
                queue_depth: self.server.queue_depth,
            },
            reference_model: None,
        }
    }

    /// The config as `endorm config show` prints it: TOML with `[defaults]` filled in from the
    /// built-in defaults, and a comment for each value that is decided later (by the model, the
    /// machine or the environment).
    pub fn show(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        shown.defaults = ModelSettings::merged(&[&self.defaults]);
        let text = toml::to_string_pretty(&shown)?;
        let mut server_notes = Vec::new();
        if self.server.socket.is_none() {
            server_notes.push(format!(
                "# socket: unset, so ${} or else {}",
                paths::SOCKET_ENV,
                shown_path(paths::default_socket())
            ));
        }
        if self.server.token_file.is_none() {
            server_notes.push(format!(
                "# token_file: unset, so {}",
                shown_path(paths::default_token_file())
            ));
        }
        if self.server.default_model.is_none() {
            let specs = self.model_specs(&Overrides::default());
            if let Some(id) = self.default_model_id(&specs, None) {
                server_notes.push(format!("# default_model: unset, so {id:?}"));
            }
        }
        let mut default_notes = Vec::new();
        if shown.defaults.n_ctx.is_none() {
            default_notes
                .push("# n_ctx: unset, so the model's trained context, at most 4096".to_owned());
        }
        if shown.defaults.n_threads.is_none() {
            let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
            default_notes.push(format!(
                "# n_threads: unset, so one per core ({cores} on this machine)"
            ));
        }
        let mut out = String::new();
        for line in text.lines() {
            let notes = match line {
                "[server]" => std::mem::take(&mut server_notes),
                "[defaults]" => std::mem::take(&mut default_notes),
                _ => Vec::new(),
            };
            for line in std::iter::once(line.to_owned()).chain(notes) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

fn shown_path(path: Option<PathBuf>) -> String {
    path.map_or_else(
        || "(no runtime directory on this system)".into(),
        |p| format!("{:?}", p.display().to_string()),
    )
}

/// Refuses addresses other hosts could reach unless `allow_remote`: by default the TCP listener
/// is for local clients only.
pub fn check_listen(address: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if address.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {address}: only loopback addresses (127.0.0.1, [::1]) are \
             allowed unless [server] allow_remote = true (for clients on other hosts, such as an \
             RL cluster's nodes)"
        ))
    }
}

fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "model id {id:?} must be 1 to 128 letters, digits, '.', '-' or '_'"
        ))
    }
}

fn resolve_path(path: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = directories::BaseDirs::new() {
            return home.home_dir().join(rest);
        }
    }
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests;
