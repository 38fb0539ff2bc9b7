//! Runtime CPU dispatch (`--features cpu-dispatch`): the daemon loads the best ggml CPU variant
//! this machine runs and names it; `ENDORM_CPU_VARIANT` pins one. The values of a pinned variant
//! against the same-kernel reference are `reference::` run with `ENDORM_CPU_VARIANT=haswell`
//! (scripts/test), the kernels of the static x86-64-v3 build.

use serde_json::json;

use crate::support::{model_section, Daemon};

/// Variants for CPUs before AVX2: a machine with AVX2 must never get one of them.
const BELOW_AVX2: [&str; 5] = ["x64", "sse42", "sandybridge", "ivybridge", "piledriver"];

fn cpu_of(daemon: &Daemon) -> String {
    let models = daemon.get("/v1/models").json();
    models["data"][0]["meta"]["cpu"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta.cpu in {models}"))
        .to_owned()
}

fn variants_built() -> Vec<String> {
    let dir = llama_cpp_sys_2::BACKENDS_DIR.expect("a cpu-dispatch build records its backends");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("libggml-cpu-")?
                    .strip_suffix(".so")?
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_daemon_runs_a_variant_this_cpu_can_run_and_names_it() {
    let daemon = Daemon::start(&model_section("m"), &[]);
    let cpu = cpu_of(&daemon);
    assert!(variants_built().contains(&cpu), "{cpu}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            !BELOW_AVX2.contains(&cpu.as_str()),
            "{cpu} on a CPU with AVX2"
        );
    }
    assert!(daemon.log_text().contains(&format!("cpu={cpu}")));
    let scored = daemon.ok(
        "/v1/score",
        &json!({"format": "raw", "prompt": "The capital of France is", "candidates": [" Paris", " Rome"]}),
    );
    assert_eq!(scored["order"], json!([0, 1]), "{scored}");
}

#[test]
fn a_pinned_variant_runs_and_an_unknown_one_fails_the_model_with_the_choices() {
    let pinned = Daemon::spawn_env(
        &model_section("m"),
        &[],
        &[("ENDORM_CPU_VARIANT", "haswell")],
    );
    pinned.wait_ready();
    assert_eq!(cpu_of(&pinned), "haswell");

    // Every model fails with it, so `serve` stops at start-up, saying why.
    let mut unknown = Daemon::spawn_env(
        &model_section("m"),
        &[],
        &[("ENDORM_CPU_VARIANT", "pentium")],
    );
    assert!(!unknown.wait_exit(60).success());
    let log = unknown.log_text();
    assert!(
        log.contains("no model could be loaded")
            && log.contains("ENDORM_CPU_VARIANT=pentium")
            && log.contains("haswell"),
        "{log}"
    );
}
