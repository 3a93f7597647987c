//! Log output in Celery's habits: `[2026-11-21 10:00:00,123: INFO/MainProcess] message` on
//! stderr, or one JSON object per line with `--log-format json` (with the same
//! `processName`).

use std::fmt;
use std::io::BufWriter;

use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{
    Format, FormatEvent, FormatFields, Json, JsonFields, Writer,
};
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::registry::LookupSpan;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Celery's human format.
    #[default]
    Celery,
    /// One JSON object per line.
    Json,
}

/// Options shared by every subcommand.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Logging options")]
pub struct LogOpts {
    /// Logging level: DEBUG, INFO, WARNING, ERROR, CRITICAL [default: WARNING]
    #[arg(short = 'l', long = "loglevel", env = "CELERIAC_LOGLEVEL", global = true, value_parser = parse_level)]
    pub loglevel: Option<Level>,
    /// Log line format [default: celery]
    #[arg(long, env = "CELERIAC_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

fn parse_level(text: &str) -> Result<Level, String> {
    match text.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(Level::DEBUG),
        "INFO" => Ok(Level::INFO),
        "WARN" | "WARNING" => Ok(Level::WARN),
        "ERROR" | "CRITICAL" | "FATAL" => Ok(Level::ERROR),
        _ => Err(format!(
            "unknown level {text:?} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        )),
    }
}

/// Installs the global subscriber. `RUST_LOG` refines the level per module when set.
///
/// Lines are written by a thread of their own, through a buffer flushed whenever no line is
/// waiting: a busy worker logs two lines per task, and a write system call for each on the
/// task's own thread cost more than the task. Nothing is dropped (the writer blocks when
/// far behind); keep the returned guard until exit, dropping it flushes what is left.
pub fn init(opts: &LogOpts) -> WorkerGuard {
    let level = opts.loglevel.unwrap_or(Level::WARN);
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level.as_str()));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(BufWriter::with_capacity(
            LOG_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colour);
    match opts.log_format.unwrap_or_default() {
        LogFormat::Celery => builder
            .event_format(CeleryFormat {
                process_name: process_name(),
            })
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonFormat::new(&process_name()))
            .init(),
    }
    guard
}

/// How much log text is gathered into one write.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// How many lines may wait for the writer thread before logging blocks. tracing-appender's
/// default, 128,000, preallocates and touches a 4 MiB queue: a tenth of an idle worker's
/// memory, for a backlog the writer thread never lets build up.
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// `[%(asctime)s: %(levelname)s/%(processName)s] %(message)s`
struct CeleryFormat {
    process_name: String,
}

/// tracing-subscriber's flat JSON object with Celery's `processName` as its first key, so the
/// lines of several processes (`celeriac worker --processes`) can be told apart.
struct JsonFormat {
    inner: Format<Json>,
    /// `"processName":"…",`
    process_field: String,
}

impl JsonFormat {
    fn new(process_name: &str) -> JsonFormat {
        JsonFormat {
            inner: format().json().flatten_event(true),
            process_field: format!("\"processName\":{},", serde_json::Value::from(process_name)),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{}{rest}", self.process_field),
            None => writer.write_str(&line),
        }
    }
}

/// Celery's `processName`: `MainProcess`, or `WorkerProcess-N` in the Nth process that
/// `celeriac worker --processes` started.
fn process_name() -> String {
    #[cfg(unix)]
    if let Some(index) = super::worker_processes::supervised_index() {
        return format!("WorkerProcess-{index}");
    }
    "MainProcess".to_owned()
}

impl<S, N> FormatEvent<S, N> for CeleryFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = time_now();
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        write!(writer, "[{now}: {level}/{}] ", self.process_name)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The local time as Celery prints it, `2026-11-21 10:00:00,123` (UTC: no tz database is
/// consulted, so logs from several machines line up).
fn time_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02},{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's civil-from-days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn json_lines_name_the_process_first() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .expect("not poisoned")
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonFormat::new("WorkerProcess-2"))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(task = "tasks.add", "Task accepted");
        });
        let text =
            String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
        assert!(
            text.starts_with("{\"processName\":\"WorkerProcess-2\",\""),
            "{text}"
        );
        let line: serde_json::Value =
            serde_json::from_str(text.trim_end()).expect("one JSON object");
        assert_eq!(line["processName"], "WorkerProcess-2");
        assert_eq!(line["message"], "Task accepted");
        assert_eq!(line["task"], "tasks.add");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn levels_parse_like_celery() {
        assert_eq!(parse_level("warning"), Ok(Level::WARN));
        assert_eq!(parse_level("CRITICAL"), Ok(Level::ERROR));
        assert!(parse_level("loud").is_err());
    }
}
