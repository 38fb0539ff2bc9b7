//! Hot reload: watch the config file with `notify` and apply each change.
//!
//! The file's directory is watched, not the file, so editors that save by writing a new file and
//! renaming it over the old one are seen too. On a fresh install the directory may not exist yet:
//! then its nearest existing ancestor is watched, and the watch moves down as the directories
//! appear, so a config written later is still picked up without a restart (nothing is created on
//! disk). Events are debounced; a file that does not parse or validate is reported (log,
//! `/health`) and the last good config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::App;
use crate::config::{Config, ConfigError};

/// How long to wait for an editor to finish writing before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the watch alive; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

/// Watches `path` and applies its changes to `app` until the returned watch is dropped. Returns
/// `None` (and logs why) when not even an ancestor of the file's directory can be watched.
pub fn watch(path: &Path, app: Arc<App>) -> Option<ConfigWatch> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let dir = path.parent()?.to_owned();
    let name = path.file_name()?.to_owned();
    // Whether the file's own directory is watched (else an ancestor, where every event counts).
    let at_home = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let handler = {
        let at_home = Arc::clone(&at_home);
        let dir = dir.clone();
        move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            // The file, or its directory itself (removed: the watch must move up again).
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()) || *p == dir);
            if ours || !at_home.load(Ordering::Relaxed) {
                let _ = tx.try_send(());
            }
        }
    };
    let watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => Arc::new(Mutex::new(watcher)),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the config: changes need a restart");
            return None;
        }
    };
    let mut watched = follow(&watcher, &dir, None, &at_home);
    watched.as_ref()?;
    if !at_home.load(Ordering::Relaxed) {
        tracing::info!(
            config = %path.display(),
            watching = %watched.as_deref().unwrap_or(&dir).display(),
            "the config's directory does not exist yet: watching for it"
        );
    }
    let weak = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        let mut present = path.exists();
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let Some(watcher) = weak.upgrade() else { break };
            watched = follow(&watcher, &dir, watched, &at_home);
            drop(watcher);
            // A file that never existed is not "removed"; one that was, is (and reported).
            let exists = path.exists();
            if exists || present {
                reload(&path, &app);
            }
            present = exists;
        }
    });
    Some(ConfigWatch { _watcher: watcher })
}

/// Points `watcher` at `dir`, or at its nearest existing ancestor while `dir` does not exist, and
/// returns what it watches now. Checks again after each move, so directories made in between
/// (`mkdir -p`) are not missed.
fn follow(
    watcher: &Mutex<RecommendedWatcher>,
    dir: &Path,
    mut watched: Option<PathBuf>,
    at_home: &AtomicBool,
) -> Option<PathBuf> {
    let mut watcher = watcher.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let target = dir.ancestors().find(|d| d.is_dir())?.to_owned();
        if watched.as_ref() == Some(&target) {
            return watched;
        }
        if let Some(old) = watched.take() {
            let _ = watcher.unwatch(&old);
        }
        if let Err(error) = watcher.watch(&target, RecursiveMode::NonRecursive) {
            if !target.is_dir() {
                continue; // removed in between: look again
            }
            tracing::warn!(dir = %target.display(), %error, "cannot watch the config's directory: changes need a restart");
            at_home.store(false, Ordering::Relaxed);
            return None;
        }
        at_home.store(target == dir, Ordering::Relaxed);
        watched = Some(target);
    }
}

/// Reads `path` and applies it, or records why it cannot be applied.
pub fn reload(path: &Path, app: &App) {
    let overrides = &app.registry.overrides().settings;
    let result = match path.exists() {
        true => Config::load(path)
            .and_then(|config| {
                let path = path.to_owned();
                config
                    .validate_with(overrides)
                    .map(|()| config)
                    .map_err(|message| ConfigError::Invalid { path, message })
            })
            .map_err(|e| e.to_string()),
        false => Err(format!(
            "the config {} was removed; the last good config keeps serving",
            path.display()
        )),
    };
    match result {
        Ok(config) => {
            if config.server.socket != app.started.server.socket
                || config.server.listen != app.started.server.listen
                || config.server.web != app.started.server.web
            {
                tracing::warn!(
                    "[server] socket, listen and web changes take effect at the next start"
                );
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
