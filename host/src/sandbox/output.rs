//! Captures what a guest writes (stdout, stderr, `context.log`) into task log lines, within
//! a byte budget.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::TaskEvents;
use super::bindings::types::LogLevel;

/// Longest single line forwarded; a guest that never writes a newline still gets its output
/// logged in pieces of this size.
const MAX_LINE_BYTES: usize = 16 << 10;

/// The log of one running task: guest output split into lines and handed to the task's
/// [`TaskEvents`] as it arrives, so a long task logs live.
#[derive(Clone)]
pub(crate) struct TaskLog {
    /// A std mutex: writes are short, never await, and come from one guest at a time.
    inner: Arc<Mutex<LogState>>,
}

struct LogState {
    events: Arc<dyn TaskEvents>,
    budget_left: usize,
    truncated: bool,
    /// Unfinished lines of stdout and stderr.
    partial: [Vec<u8>; 2],
}

/// Which guest stream a write came from.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl TaskLog {
    pub(crate) fn new(events: Arc<dyn TaskEvents>, budget: usize) -> Self {
        TaskLog {
            inner: Arc::new(Mutex::new(LogState {
                events,
                budget_left: budget,
                truncated: false,
                partial: [Vec::new(), Vec::new()],
            })),
        }
    }

    /// Points the log at another task (instance reuse) with a fresh budget.
    pub(crate) fn reset(&self, events: Arc<dyn TaskEvents>, budget: usize) {
        let mut state = self.lock();
        state.events = events;
        state.budget_left = budget;
        state.truncated = false;
        state.partial = [Vec::new(), Vec::new()];
    }

    /// A `context.log` call.
    pub(crate) fn log(&self, level: LogLevel, message: &str) {
        let mut state = self.lock();
        if state.charge(message.len()) {
            state.events.log(level, message);
        }
    }

    /// Raw bytes written to stdout or stderr.
    pub(crate) fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut state = self.lock();
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(newline);
            state.partial[stream as usize].extend_from_slice(line);
            state.emit(stream);
            bytes = &rest[1..];
        }
        state.partial[stream as usize].extend_from_slice(bytes);
        if state.partial[stream as usize].len() >= MAX_LINE_BYTES {
            state.emit(stream);
        }
    }

    /// Emits unfinished lines; called when the invocation ends.
    pub(crate) fn flush(&self) {
        let mut state = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !state.partial[stream as usize].is_empty() {
                state.emit(stream);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A poisoned lock only means another writer panicked mid-line; the text is still
        // usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LogState {
    /// Takes `len` bytes from the budget; notes the truncation once when it runs out.
    fn charge(&mut self, len: usize) -> bool {
        if len <= self.budget_left {
            self.budget_left -= len;
            return true;
        }
        self.budget_left = 0;
        if !self.truncated {
            self.truncated = true;
            self.events.log(
                LogLevel::Warning,
                "celeriac: log output limit reached, further output dropped",
            );
        }
        false
    }

    fn emit(&mut self, stream: Stream) {
        let line = std::mem::take(&mut self.partial[stream as usize]);
        if self.charge(line.len()) {
            // Celery logs redirected stdout/stderr at WARNING (worker_redirect_stdouts_level).
            let text = String::from_utf8_lossy(&line);
            self.events
                .log(LogLevel::Warning, text.trim_end_matches('\r'));
        }
    }
}

/// A WASI stdout/stderr that writes into a [`TaskLog`].
#[derive(Clone)]
pub(crate) struct GuestOutput {
    log: TaskLog,
    stream: Stream,
}

impl GuestOutput {
    pub(crate) fn new(log: TaskLog, stream: Stream) -> Self {
        GuestOutput { log, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Writes never block: over budget they are dropped, not refused.
        Ok(usize::MAX)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl TaskEvents for Recorder {
        fn log(&self, _level: LogLevel, message: &str) {
            self.0.lock().unwrap().push(message.to_string());
        }
        fn update_state(&self, _state: &str, _meta_json: &str) {}
    }

    #[test]
    fn writes_are_split_into_lines_and_flushed_at_the_end() {
        let recorder = Arc::new(Recorder::default());
        let log = TaskLog::new(recorder.clone(), 1024);
        log.write(Stream::Stdout, b"hello ");
        log.write(Stream::Stdout, b"world\nsecond\r\nthird");
        log.flush();
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["hello world", "second", "third"]
        );
    }

    #[test]
    fn output_over_budget_is_dropped_with_one_note() {
        let recorder = Arc::new(Recorder::default());
        let log = TaskLog::new(recorder.clone(), 10);
        log.write(Stream::Stderr, b"0123456789\nmore\nand more\n");
        let lines = recorder.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "0123456789");
        assert!(lines[1].contains("log output limit reached"));
    }
}
