//! Build script: records which CPU llama.cpp is compiled for, so that `/v1/models` and the logs can
//! say which kernels score; with the `cpu-dispatch` feature, lets the binary find its shared
//! llama.cpp libraries in its own directory (an rpath of `$ORIGIN`), wherever it is installed.

fn main() {
    // llama-cpp-sys-2 compiles llama.cpp with `-march=` the Rust target CPU (.cargo/config.toml),
    // so that is what a static build runs; a dispatched build names its variant at start-up.
    let target_cpu = std::env::var("CARGO_ENCODED_RUSTFLAGS")
        .unwrap_or_default()
        .split('\x1f')
        .find_map(|flag| flag.split("target-cpu=").nth(1).map(str::to_owned))
        .unwrap_or_else(|| "generic".to_owned());
    println!("cargo:rustc-env=ENDORM_TARGET_CPU={target_cpu}");

    let dispatch = std::env::var_os("CARGO_FEATURE_CPU_DISPATCH").is_some();
    match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        // DT_RPATH, not RUNPATH: it also finds libggml-base for libllama and libggml.
        Ok("linux") if dispatch => {
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,$ORIGIN")
        }
        Ok("macos") if dispatch => println!("cargo:rustc-link-arg=-Wl,-rpath,@loader_path"),
        _ => {}
    }
}
