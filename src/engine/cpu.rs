//! Which CPU kernels score. A default build links one set of ggml CPU kernels, compiled for the
//! Rust target CPU (`x86-64-v3`, `.cargo/config.toml`). A `cpu-dispatch` build carries every
//! variant ggml offers (`libggml-cpu-haswell.so`, `-zen4`, `-sapphirerapids`, ...) as shared
//! libraries and registers, before the first model loads, the best one this CPU can run.
//!
//! The choice is endorm's, not ggml's `ggml_backend_load_all`: endorm must know the variant's name
//! (`/v1/models` shows it, because values depend on the kernels), honour `ENDORM_CPU_VARIANT` (the
//! tests pin `haswell`, the kernels of the static build, to compare against its exact reference),
//! and never pick up the libraries of another build: ggml would search its build directory first.

/// The kernels of a static build: those of the target CPU it was compiled for.
#[cfg(not(feature = "cpu-dispatch"))]
pub(super) fn load() -> Result<String, String> {
    Ok(env!("ENDORM_TARGET_CPU").to_owned())
}

#[cfg(feature = "cpu-dispatch")]
pub(super) use dispatch::load;

#[cfg(feature = "cpu-dispatch")]
mod dispatch {
    use std::ffi::CString;
    use std::path::{Path, PathBuf};

    use llama_cpp_sys_2 as sys;

    /// The file name of a ggml backend library: `libggml-NAME.so` (ggml uses `.so` on macOS too).
    fn library(name: &str) -> String {
        format!("libggml-{name}.so")
    }

    /// Registers the best CPU variant (or `ENDORM_CPU_VARIANT`) and any RPC backend found beside
    /// it; returns the variant's name.
    pub(in crate::engine) fn load() -> Result<String, String> {
        let dir = backends_dir()?;
        let variants = variants(&dir)?;
        let chosen = match std::env::var("ENDORM_CPU_VARIANT") {
            Ok(name) if !name.is_empty() => {
                let (_, score) = variants.iter().find(|(v, _)| *v == name).ok_or_else(|| {
                    format!(
                        "ENDORM_CPU_VARIANT={name}: no {} in {} (there: {})",
                        library(&format!("cpu-{name}")),
                        dir.display(),
                        names(&variants)
                    )
                })?;
                if *score == 0 {
                    return Err(format!(
                        "ENDORM_CPU_VARIANT={name}: this CPU lacks instructions that variant \
                         needs (it can run: {})",
                        names_where(&variants, |s| s > 0)
                    ));
                }
                name
            }
            _ => variants
                .iter()
                .filter(|(_, score)| *score > 0)
                .max_by_key(|(_, score)| *score)
                .map(|(name, _)| name.clone())
                .ok_or_else(|| {
                    format!(
                        "no CPU variant in {} runs on this CPU (there: {})",
                        dir.display(),
                        names(&variants)
                    )
                })?,
        };
        register(&dir.join(library(&format!("cpu-{chosen}"))))?;
        let rpc = dir.join(library("rpc"));
        if rpc.is_file() {
            register(&rpc)?;
        }
        tracing::debug!(dir = %dir.display(), variants = %names(&variants), chosen, "CPU kernels");
        Ok(chosen)
    }

    /// `ENDORM_BACKENDS_DIR`, else the binary's own directory (an installed build), else the
    /// directory the build wrote them to (`cargo run`, the tests).
    fn backends_dir() -> Result<PathBuf, String> {
        if let Some(dir) = std::env::var_os("ENDORM_BACKENDS_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let beside_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok())
            .and_then(|exe| exe.parent().map(Path::to_owned))
            .filter(|dir| variant_files(dir).is_ok());
        beside_binary
            .or_else(|| sys::BACKENDS_DIR.map(PathBuf::from))
            .ok_or_else(|| {
                "no ggml CPU libraries (libggml-cpu-*.so) beside the binary; install with \
                 scripts/install-dispatch or set ENDORM_BACKENDS_DIR"
                    .to_owned()
            })
    }

    /// Each `libggml-cpu-NAME.so` in `dir` with the score it gives this CPU (0: cannot run here),
    /// sorted by name.
    fn variants(dir: &Path) -> Result<Vec<(String, i32)>, String> {
        Ok(variant_files(dir)?
            .into_iter()
            .map(|(name, path)| (name, score(&path)))
            .collect())
    }

    /// Each `libggml-cpu-NAME.so` in `dir`, by name; an error when there is none.
    fn variant_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("the ggml CPU libraries' directory {}: {e}", dir.display()))?;
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let file = entry.file_name().into_string().ok()?;
                let name = file.strip_prefix("libggml-cpu-")?.strip_suffix(".so")?;
                Some((name.to_owned(), entry.path()))
            })
            .collect();
        if found.is_empty() {
            return Err(format!(
                "no ggml CPU libraries (libggml-cpu-*.so) in {}",
                dir.display()
            ));
        }
        found.sort();
        Ok(found)
    }

    /// What the library says of this CPU: 0 when it needs instructions the CPU lacks, else higher
    /// for more specific kernels. A library that does not load scores 0.
    fn score(path: &Path) -> i32 {
        // SAFETY: the libraries are ggml's CPU backends from this build (or the directory the user
        // named); loading one runs only its static initialisers, and `ggml_backend_score` takes
        // no argument and only reads CPUID. The library is unloaded again when dropped.
        unsafe {
            let Ok(library) = libloading::Library::new(path) else {
                return 0;
            };
            library
                .get::<unsafe extern "C" fn() -> i32>(b"ggml_backend_score\0")
                .map_or(0, |score| score())
        }
    }

    fn register(path: &Path) -> Result<(), String> {
        let text = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: a NUL-terminated path; ggml keeps the library loaded for the process.
        let reg = unsafe { sys::ggml_backend_load(text.as_ptr()) };
        if reg.is_null() {
            return Err(format!("ggml could not load {}", path.display()));
        }
        Ok(())
    }

    fn names(variants: &[(String, i32)]) -> String {
        names_where(variants, |_| true)
    }

    fn names_where(variants: &[(String, i32)], keep: impl Fn(i32) -> bool) -> String {
        let kept: Vec<&str> = variants
            .iter()
            .filter(|(_, score)| keep(*score))
            .map(|(name, _)| name.as_str())
            .collect();
        kept.join(", ")
    }
}
