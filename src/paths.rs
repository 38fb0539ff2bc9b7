//! Where endorm keeps things on this machine, per the `directories` conventions of each OS.

use std::path::PathBuf;

use directories::ProjectDirs;

/// The file name of the default model, SmolLM2-135M-Instruct (installed by `scripts/fetch-model`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The id the default model is served under.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

fn project() -> Option<ProjectDirs> {
    ProjectDirs::from("", "", "endorm")
}

/// Where models are installed: `$ENDORM_MODEL_DIR`, else `<cache dir>/endorm/models`
/// (`~/.cache/endorm/models` on Linux, `~/Library/Caches/endorm/models` on macOS).
pub fn model_dir() -> Option<PathBuf> {
    match std::env::var_os("ENDORM_MODEL_DIR") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => project().map(|p| p.cache_dir().join("models")),
    }
}

/// The default model's path (which may not exist yet).
pub fn default_model() -> Option<PathBuf> {
    model_dir().map(|dir| dir.join(DEFAULT_MODEL_FILE))
}

/// The id a model file is served under: its file name, lower-cased, without `.gguf` and without a
/// quantisation suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct`).
pub fn model_id(path: &std::path::Path) -> String {
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
    use std::path::Path;

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
}
