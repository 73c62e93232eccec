//! Progress of blob transfers: bars on a terminal, a line per blob otherwise, or tracing only.
//!
//! The CLI uses [`Progress::auto`]: indicatif bars with bytes, rate and ETA when stderr is a
//! terminal, else one line per finished blob (size, time, rate) so CI logs stay readable. The
//! node agent passes [`Progress::silent`], which logs finished blobs at debug level.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug)]
enum Mode {
    Silent,
    Lines,
    Bars(MultiProgress),
}

/// Where progress goes; cheap to clone and shared by concurrent transfers.
#[derive(Debug, Clone)]
pub struct Progress {
    mode: Arc<Mode>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::silent()
    }
}

impl Progress {
    /// No output; finished blobs are logged with `tracing` at debug level.
    pub fn silent() -> Progress {
        Progress {
            mode: Arc::new(Mode::Silent),
        }
    }

    /// One line on stderr per finished blob.
    pub fn lines() -> Progress {
        Progress {
            mode: Arc::new(Mode::Lines),
        }
    }

    /// indicatif bars on stderr.
    pub fn bars() -> Progress {
        Progress {
            mode: Arc::new(Mode::Bars(MultiProgress::with_draw_target(
                ProgressDrawTarget::stderr(),
            ))),
        }
    }

    /// Bars when stderr is a terminal, else lines.
    pub fn auto() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bars()
        } else {
            Progress::lines()
        }
    }

    /// Starts tracking one transfer (`verb` like "pushing", `name` a blob title).
    pub fn task(&self, verb: &str, name: &str, total: Option<u64>) -> Task {
        let bar = match &*self.mode {
            Mode::Bars(multi) => {
                let bar = match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::no_length(),
                };
                let style = ProgressStyle::with_template(
                    "{prefix:>10} {msg:24!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let bar = multi.add(bar.with_style(style));
                bar.set_prefix(verb.to_string());
                bar.set_message(name.to_string());
                Some(bar)
            }
            _ => None,
        };
        Task {
            inner: Arc::new(TaskInner {
                progress: self.clone(),
                bar,
                verb: verb.to_string(),
                name: name.to_string(),
                started: Instant::now(),
                bytes: AtomicU64::new(0),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// A status line (printed above the bars, on stderr, or logged when silent).
    pub fn message(&self, text: &str) {
        match &*self.mode {
            Mode::Silent => tracing::info!("{text}"),
            Mode::Lines => eprintln!("{text}"),
            Mode::Bars(multi) => {
                if multi.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
        }
    }
}

#[derive(Debug)]
struct TaskInner {
    progress: Progress,
    bar: Option<ProgressBar>,
    verb: String,
    name: String,
    started: Instant,
    bytes: AtomicU64,
    finished: AtomicBool,
}

/// One transfer's progress; clones share it. Dropped unfinished, its bar is marked failed.
#[derive(Debug, Clone)]
pub struct Task {
    inner: Arc<TaskInner>,
}

impl Task {
    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.inner.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.inner.bar {
            b.inc(n);
        }
    }

    /// Bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Sets the expected total once it is known.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.inner.bar {
            b.set_length(total);
        }
    }

    /// Marks the transfer done, reporting bytes, time and rate; `note` is appended (e.g. "exists").
    pub fn finish(&self, note: &str) {
        if self.inner.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let i = &self.inner;
        let bytes = self.bytes();
        let secs = i.started.elapsed();
        let line = summary(&i.verb, &i.name, bytes, secs, note);
        match &*i.progress.mode {
            Mode::Silent => {
                tracing::debug!(verb = %i.verb, blob = %i.name, bytes, secs = secs.as_secs_f64(), note, "blob done")
            }
            Mode::Lines => eprintln!("{line}"),
            Mode::Bars(_) => {
                if let Some(b) = &i.bar {
                    b.finish_and_clear();
                }
                i.progress.message(&line);
            }
        }
    }
}

impl Drop for TaskInner {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Acquire) {
            if let Some(b) = &self.bar {
                b.abandon_with_message(format!("{} (failed)", self.name));
            }
        }
    }
}

/// `pushed disk.qcow2: 12.0 MiB in 1.2s (10.0 MiB/s)`.
fn summary(verb: &str, name: &str, bytes: u64, took: Duration, note: &str) -> String {
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 {
        HumanBytes((bytes as f64 / secs) as u64).to_string()
    } else {
        "-".to_string()
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(" {note}")
    };
    format!(
        "{verb} {name}: {} in {secs:.1}s ({rate}/s){note}",
        HumanBytes(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let s = summary("pulled", "disk.qcow2", 10 << 20, Duration::from_secs(2), "");
        assert_eq!(s, "pulled disk.qcow2: 10.00 MiB in 2.0s (5.00 MiB/s)");
    }

    #[test]
    fn silent_tasks_count_bytes() {
        let p = Progress::silent();
        let t = p.task("pulling", "x", Some(10));
        t.clone().inc(4);
        t.inc(6);
        assert_eq!(t.bytes(), 10);
        t.finish("");
        t.finish("twice is harmless");
    }
}
