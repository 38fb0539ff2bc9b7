//! Shared by the integration tests: the real default model, loaded once per test binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use endorm::engine::{ContextOptions, Model, ModelOptions, Scorer};

/// The default model: `$ENDORM_TEST_MODEL`, else where `scripts/fetch-model` installs it.
pub fn model_path() -> PathBuf {
    std::env::var_os("ENDORM_TEST_MODEL")
        .map(PathBuf::from)
        .or_else(endorm::paths::default_model)
        .filter(|p| p.is_file())
        .expect("the default model is missing: run scripts/fetch-model (or set ENDORM_TEST_MODEL)")
}

/// The default model, loaded once.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&model_path(), &ModelOptions::default()).expect("load model"))
}

/// Context options for tests: small and quick, two threads.
pub fn options() -> ContextOptions {
    ContextOptions {
        n_ctx: 2048,
        n_batch: 512,
        n_threads: 2,
        max_sequences: 16,
        cache_slots: 0,
        cache_tokens: 2048,
    }
}

/// A scorer on the default model with `options`.
pub fn scorer(options: ContextOptions) -> Scorer<'static> {
    Scorer::new(model(), options).expect("create context")
}

/// The directory of the reference data.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}
