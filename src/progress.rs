//! The progress bars of long runs (`endorm score`, `endorm eval`, `endorm bench`, `endorm pull`): on
//! stderr, with rate and ETA.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` units named `unit` (e.g. "lines"); hidden when not `visible`.
pub fn bar(visible: bool, total: u64, unit: &str) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template =
        format!("{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  {{elapsed}} elapsed, ETA {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A bar over `total` bytes (a spinner with the bytes so far when the total is unknown), named
/// `name`; hidden when not `visible`.
pub fn bytes(visible: bool, total: Option<u64>, name: &str) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(total, target);
    let template = format!(
        "{name} {{bar:30}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}}, ETA {{eta}}  {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
