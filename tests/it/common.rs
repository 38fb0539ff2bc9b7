//! Shared by the integration tests: the real default model, loaded once per test binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use endorm::engine::{ContextOptions, KvType, Model, ModelOptions, Scorer};

/// The default model: `$ENDORM_TEST_MODEL`, else where `endorm pull` installs it.
pub fn model_path() -> PathBuf {
    std::env::var_os("ENDORM_TEST_MODEL")
        .map(PathBuf::from)
        .or_else(endorm::paths::default_model)
        .filter(|p| p.is_file())
        .expect("the default model is missing: run endorm pull (or set ENDORM_TEST_MODEL)")
}

/// The default model, loaded once: on the CPU, or with `$ENDORM_TEST_N_GPU_LAYERS` layers on the
/// GPU of a GPU build (scripts/test runs the tests that count decodes so on the Vulkan build).
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let options = ModelOptions {
            n_gpu_layers: n_gpu_layers(),
            ..ModelOptions::default()
        };
        Model::load(&model_path(), &options).expect("load model")
    })
}

/// `$ENDORM_TEST_N_GPU_LAYERS`, else 0.
pub fn n_gpu_layers() -> u32 {
    std::env::var("ENDORM_TEST_N_GPU_LAYERS").map_or(0, |n| {
        n.parse()
            .expect("ENDORM_TEST_N_GPU_LAYERS is a number of layers")
    })
}

/// Context options for tests: small and quick, two threads, the daemon's defaults otherwise.
pub fn options() -> ContextOptions {
    ContextOptions {
        n_ctx: 2048,
        n_batch: 512,
        n_threads: 2,
        max_sequences: 16,
        cache_slots: 0,
        cache_tokens: 2048,
        prefix_tree: true,
        type_k: KvType::F16,
        type_v: KvType::F16,
    }
}

/// [`options`] with the layout-invariant KV cache (`q8_0` keys and values): a text's values are
/// the same bit for bit whatever else is in its decodes (README, "Numerics").
pub fn invariant() -> ContextOptions {
    ContextOptions {
        type_k: KvType::Q8_0,
        type_v: KvType::Q8_0,
        ..options()
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
