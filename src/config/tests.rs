//! Tests of the parent module.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/endorm/config.toml"))
}

#[test]
fn the_documented_default_config_parses() {
    let text = include_str!("../../config/endorm.toml");
    let config = parse(text).expect("config/endorm.toml is valid");
    assert_eq!(config.server, ServerConfig::default());
}

#[test]
fn models_take_defaults_and_resolve_paths() {
    let config = parse(
        "[defaults]\nn_ctx = 1024\nprinciple = \"be brief\"\n\
         [models.a]\npath = \"a.gguf\"\nn_ctx = 2048\n\
         [models.b]\npath = \"/m/b.gguf\"\nprinciple = \"be kind\"\nreference_model = \"a\"\n",
    )
    .unwrap();
    let specs = config.model_specs(&Overrides::default());
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].worker.path, Path::new("/etc/endorm/a.gguf"));
    assert_eq!(specs[0].worker.settings.n_ctx, Some(2048));
    assert_eq!(specs[0].principle.as_deref(), Some("be brief"));
    assert_eq!(specs[1].worker.settings.n_ctx, Some(1024));
    assert_eq!(specs[1].principle.as_deref(), Some("be kind"));
    assert_eq!(specs[0].reference_model, None);
    assert_eq!(specs[1].reference_model.as_deref(), Some("a"));
    assert_eq!(config.default_model_id(&specs, None).as_deref(), Some("a"));
}

#[test]
fn cli_model_is_served_and_default() {
    let config = parse("[models.a]\npath = \"/m/a.gguf\"\n").unwrap();
    let cli = Path::new("/x/Other-Model.Q4_K_M.gguf");
    let overrides = Overrides {
        model: Some(cli.to_owned()),
        ..Overrides::default()
    };
    let specs = config.model_specs(&overrides);
    assert_eq!(specs.len(), 2);
    assert_eq!(
        config.default_model_id(&specs, Some(cli)).as_deref(),
        Some("other-model")
    );
}

#[test]
fn connection_limits_have_defaults_and_refuse_zero() {
    let config = parse("[server]\nmax_connections = 8\nbody_timeout_secs = 5\n").unwrap();
    assert_eq!(config.server.max_connections, 8);
    assert_eq!(config.server.body_timeout_secs, 5);
    let defaults = ServerConfig::default();
    assert_eq!(
        (
            defaults.header_timeout_secs,
            defaults.body_timeout_secs,
            defaults.idle_timeout_secs,
            defaults.max_connections
        ),
        (10, 30, 60, 256)
    );
    for key in [
        "max_connections",
        "header_timeout_secs",
        "body_timeout_secs",
        "idle_timeout_secs",
    ] {
        let zero = parse(&format!("[server]\n{key} = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(zero.contains(key), "{zero}");
    }
}

#[test]
fn mistakes_are_named() {
    let unknown = parse("[server]\nmax_body = 3\n").unwrap_err().to_string();
    assert!(unknown.contains("max_body"), "{unknown}");
    let zero = parse("[server]\nqueue_depth = 0\n")
        .unwrap_err()
        .to_string();
    assert!(zero.contains("queue_depth"), "{zero}");
    let remote = parse("[server]\nlisten = \"0.0.0.0:80\"\n")
        .unwrap_err()
        .to_string();
    assert!(remote.contains("loopback"), "{remote}");
    assert!(remote.contains("allow_remote"), "{remote}");
    let cluster =
        parse("[server]\nlisten = \"0.0.0.0:80\"\nallow_remote = true\nauth = \"none\"\n").unwrap();
    assert_eq!(cluster.server.auth, Auth::None);
    assert_eq!(ServerConfig::default().auth, Auth::Token);
    let auth = parse("[server]\nauth = \"basic\"\n")
        .unwrap_err()
        .to_string();
    assert!(auth.contains("auth"), "{auth}");
    let default = parse("[server]\ndefault_model = \"x\"\n[models.a]\npath = \"a\"\n")
        .unwrap_err()
        .to_string();
    assert!(default.contains("default_model"), "{default}");
    let reference = parse("[models.a]\npath = \"a\"\nreference_model = \"b\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        reference.contains("[models.a] reference_model = \"b\" is not one of the models: a"),
        "{reference}"
    );
    let id = parse("[models.\"a b\"]\npath = \"a\"\n")
        .unwrap_err()
        .to_string();
    assert!(id.contains("model id"), "{id}");
}

#[test]
fn settings_come_from_the_command_line_then_the_entry_then_defaults_then_built_in() {
    let config = parse(
        "[defaults]\nn_ctx = 1024\nn_batch = 256\nmax_sequences = 8\n\
         [models.a]\npath = \"/m/a.gguf\"\nn_batch = 128\nn_gpu_layers = 3\n",
    )
    .unwrap();
    let flags = ModelSettings {
        n_ctx: Some(512),
        ..ModelSettings::default()
    };
    let overrides = Overrides {
        model: None,
        settings: flags,
    };
    let worker = &config.model_specs(&overrides)[0].worker;
    assert_eq!(worker.settings.n_ctx, Some(512), "the command line");
    assert_eq!(worker.settings.n_batch, Some(128), "the entry");
    assert_eq!(worker.settings.n_gpu_layers, Some(3), "the entry");
    assert_eq!(worker.settings.max_sequences, Some(8), "[defaults]");
    let built_in = ModelSettings::BUILT_IN;
    assert_eq!(worker.settings.cache_slots, built_in.cache_slots);
    assert_eq!(worker.settings.cache_tokens, built_in.cache_tokens);
    assert_eq!(worker.settings.batching, built_in.batching);
    assert_eq!(
        worker.settings.n_threads, None,
        "left to the engine: one per core"
    );
    // The command line reaches `--model` too, and a model with no entry takes [defaults].
    let overrides = Overrides {
        model: Some("/m/b.gguf".into()),
        ..overrides
    };
    let specs = config.model_specs(&overrides);
    assert_eq!(specs[1].id, "b");
    assert_eq!(specs[1].worker.settings.n_ctx, Some(512));
    assert_eq!(specs[1].worker.settings.n_batch, Some(256));
}

#[test]
fn the_built_in_defaults_fill_every_setting_but_the_model_and_machine_ones() {
    let merged = ModelSettings::merged(&[]);
    assert_eq!(merged, ModelSettings::BUILT_IN);
    for (name, value) in [
        ("n_batch", merged.n_batch),
        ("n_gpu_layers", merged.n_gpu_layers),
        ("max_sequences", merged.max_sequences),
        ("cache_slots", merged.cache_slots),
        ("cache_tokens", merged.cache_tokens),
    ] {
        assert!(value.is_some(), "{name}");
    }
    assert!(merged.batching.is_some());
    assert_eq!((merged.n_ctx, merged.n_threads), (None, None));
    check_merged("built-in", &merged).expect("the built-in defaults are valid");
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_by_name() {
    for (text, key) in [
        ("[defaults]\nn_ctxx = 3\n", "`n_ctxx`"),
        ("[models.a]\npath = \"a\"\ncache_slot = 4\n", "`cache_slot`"),
    ] {
        let error = parse(text).unwrap_err().to_string();
        assert!(error.contains(key), "{error}");
    }
    let error = parse("[models.a]\npath = \"a\"\nmax_body = 4\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("`max_body`"), "{error}");
    assert!(
        error.contains("chat_template"),
        "the keys are listed: {error}"
    );
    // Known keys of a flattened entry still parse, with their types.
    let config =
        parse("[models.a]\npath = \"a\"\nchat_template = \"\"\nbatching = true\n").unwrap();
    assert_eq!(config.models["a"].settings.batching, Some(true));
    assert_eq!(config.models["a"].chat_template.as_deref(), Some(""));
    let error = parse("[models.a]\npath = \"a\"\nn_ctx = \"big\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("big") && error.contains("`n_ctx`"),
        "{error}"
    );
    let error = parse("[models.a]\nn_ctx = 4\n").unwrap_err().to_string();
    assert!(error.contains("`path`"), "{error}");
}

#[test]
fn batching_with_the_prefix_cache_is_an_error_naming_both_and_the_fix() {
    for text in [
        "[defaults]\nbatching = true\ncache_slots = 4\n",
        "[defaults]\nbatching = true\n[models.a]\npath = \"a\"\ncache_slots = 4\n",
        "[models.a]\npath = \"a\"\nbatching = true\ncache_slots = 1\n",
    ] {
        let error = parse(text).unwrap_err().to_string();
        for part in [
            "batching = true",
            "cache_slots",
            "cache_slots = 0",
            "batching = false",
        ] {
            assert!(error.contains(part), "{part} missing in {error}");
        }
    }
    // Each alone is fine, and so is a model that turns the cache off.
    parse("[defaults]\nbatching = true\n").unwrap();
    parse("[defaults]\ncache_slots = 4\n").unwrap();
    parse("[defaults]\nbatching = true\n[models.a]\npath = \"a\"\ncache_slots = 0\n").unwrap();
}

#[test]
fn n_batch_must_exceed_cache_slots_plus_one() {
    let error = parse("[defaults]\ncache_slots = 8\n[models.a]\npath = \"a\"\nn_batch = 9\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("[models.a]"), "{error}");
    assert!(error.contains("n_batch = 9"), "{error}");
    assert!(error.contains("cache_slots + 1 = 9"), "{error}");
    parse("[defaults]\ncache_slots = 8\n[models.a]\npath = \"a\"\nn_batch = 10\n").unwrap();
    // With the cache off the engine still keeps two context slots.
    let error = parse("[defaults]\nn_batch = 3\n").unwrap_err().to_string();
    assert!(error.contains("n_batch = 3"), "{error}");
    parse("[defaults]\nn_batch = 4\n").unwrap();
    // The command line's flags are checked with the file.
    let config = parse("[models.a]\npath = \"a\"\ncache_slots = 4\n").unwrap();
    let flags = ModelSettings {
        n_batch: Some(4),
        ..ModelSettings::default()
    };
    let error = config.validate_with(&flags).unwrap_err();
    assert!(error.contains("command line"), "{error}");
}

#[test]
fn show_fills_in_every_default_and_says_which_depend_on_model_or_machine() {
    let config = parse("[models.a]\npath = \"/m/a.gguf\"\n").unwrap();
    let shown = config.show().unwrap();
    let defaults = shown
        .split("[defaults]\n")
        .nth(1)
        .expect("a [defaults] section")
        .split("\n[")
        .next()
        .unwrap();
    for key in [
        "n_batch = 512",
        "n_gpu_layers = 0",
        "max_sequences = 64",
        "cache_slots = 0",
        "cache_tokens = 4096",
        "batching = false",
        "# n_ctx: unset, so the model's trained context, at most 4096",
        "# n_threads: unset, so one per core",
    ] {
        assert!(defaults.contains(key), "{key} missing in\n{shown}");
    }
    assert!(
        shown.contains("# default_model: unset, so \"a\""),
        "{shown}"
    );
    assert!(shown.contains("max_body_bytes = 8388608"), "{shown}");
    // What is shown parses back to the same models and [server].
    let again = parse(&shown).unwrap();
    assert_eq!(again.models, config.models);
    assert_eq!(again.server, config.server);
}

#[test]
fn rpc_workers_come_from_defaults_and_an_empty_list_keeps_a_model_local() {
    let config = parse(
        "[defaults]\nrpc = [\"10.0.0.2:50052\", \"gpu-box:7\"]\n\
         [models.a]\npath = \"/m/a.gguf\"\n\
         [models.b]\npath = \"/m/b.gguf\"\nrpc = []\n",
    )
    .unwrap();
    let specs = config.model_specs(&Overrides::default());
    let rpc: Vec<&str> = specs[0]
        .worker
        .settings
        .rpc
        .iter()
        .flatten()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(rpc, ["10.0.0.2:50052", "gpu-box:7"]);
    assert!(specs[1]
        .worker
        .settings
        .rpc
        .as_ref()
        .is_none_or(Vec::is_empty));
    // `serve --rpc` is over both.
    let overrides = Overrides {
        model: None,
        settings: ModelSettings {
            rpc: Some(vec!["127.0.0.1:1".parse().unwrap()]),
            ..ModelSettings::default()
        },
    };
    for spec in config.model_specs(&overrides) {
        assert_eq!(
            spec.worker.settings.rpc.as_ref().map_or(0, Vec::len),
            1,
            "{}",
            spec.id
        );
    }
    let error = parse("[models.a]\npath = \"a\"\nrpc = [\"10.0.0.2\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("RPC worker \"10.0.0.2\": no port"),
        "{error}"
    );
}
