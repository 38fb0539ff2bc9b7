//! Hot reload: watch the config file with `notify` and apply each change.
//!
//! The file's directory is watched, not the file, so editors that save by writing a new file and
//! renaming it over the old one are seen too. Events are debounced; a file that does not parse or
//! validate is reported (log, `/health`) and the last good config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::App;
use crate::config::Config;

/// How long to wait for an editor to finish writing before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the watch alive; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `path` and applies its changes to `app` until the returned watch is dropped. Returns
/// `None` (and logs why) when the file's directory cannot be watched.
pub fn watch(path: &Path, app: Arc<App>) -> Option<ConfigWatch> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name()?.to_owned();
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the config: changes need a restart");
            return None;
        }
    };
    if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), %error, "cannot watch the config's directory: changes need a restart");
        return None;
    }
    let path: PathBuf = path.to_owned();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reload(&path, &app);
        }
    });
    Some(ConfigWatch { _watcher: watcher })
}

/// Reads `path` and applies it, or records why it cannot be applied.
pub fn reload(path: &Path, app: &App) {
    let result = match path.exists() {
        true => Config::load(path).map_err(|e| e.to_string()),
        false => Err(format!(
            "the config {} was removed; the last good config keeps serving",
            path.display()
        )),
    };
    match result {
        Ok(config) => {
            if config.server.socket != app.started.server.socket
                || config.server.listen != app.started.server.listen
            {
                tracing::warn!("[server] socket and listen changes take effect at the next start");
            }
            let changes = app.registry.apply(&config);
            app.metrics.reload(true);
            tracing::info!(path = %path.display(), changes = ?changes, "config reloaded");
        }
        Err(error) => {
            app.metrics.reload(false);
            tracing::error!(%error, "config not applied; the last good config keeps serving");
            app.registry.set_config_error(Some(error));
        }
    }
}
