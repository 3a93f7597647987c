//! `celeriac worker --processes N`: a supervisor that runs N worker processes with the
//! same settings, each a Celery node of its own (`name-1@host`, `name-2@host`, ...), passes
//! shutdown signals on to them and restarts one that dies.
//!
//! Why processes and not only threads: a guest that gets a fresh instance per task dirties
//! copy-on-write pages of its instance, and the kernel interrupts every other core running
//! a thread of the same process to flush its TLB. Fresh Python instances therefore drain no
//! faster at `-c 2` than at `-c 1` in one process, while two processes drain twice as fast
//! (README, "Side by side with Python Celery"). Celery's prefork pool is the same answer.
//! For the same reason each process runs only its share of the CPUs as runtime threads.

use std::num::NonZeroUsize;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::task::JoinSet;

use super::exit;

/// Tells a worker process started by the supervisor which one it is (from 1).
pub const PROCESS_INDEX_ENV: &str = "CELERIAC_WORKER_PROCESS";

/// tokio's setting for the threads of a multi-threaded runtime. Each process gets its share
/// of the CPUs unless the operator set it: one process's threads on several cores receive
/// each other's TLB flushes, which cost fresh Python instances 6 % within `--processes 2`
/// and a third in a single process (README, "Side by side with Python Celery").
const RUNTIME_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The wait before restarting a process that died; doubled for each quick death in a row.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A process that ran at least this long before dying counts as a fresh start again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The index of this process if a supervisor started it, from [`PROCESS_INDEX_ENV`].
pub fn supervised_index() -> Option<NonZeroUsize> {
    std::env::var(PROCESS_INDEX_ENV).ok()?.parse().ok()
}

/// The node name of process `index`: `-index` after the name part (`celery-2@host`).
pub fn indexed_nodename(nodename: &str, index: NonZeroUsize) -> String {
    match nodename.split_once('@') {
        Some((name, host)) => format!("{name}-{index}@{host}"),
        None => format!("{nodename}-{index}"),
    }
}

/// The metrics address of process `index`: the port plus `index - 1`, so each process
/// serves its own; port 0 (any free port) stays 0.
pub fn indexed_metrics_addr(
    addr: std::net::SocketAddr,
    index: NonZeroUsize,
) -> anyhow::Result<std::net::SocketAddr> {
    if addr.port() == 0 {
        return Ok(addr);
    }
    let port = u16::try_from(usize::from(addr.port()) + index.get() - 1)
        .map_err(|_| anyhow::anyhow!("--metrics-addr {addr}: no port left for process {index}"))?;
    Ok(std::net::SocketAddr::new(addr.ip(), port))
}

/// Runs `processes` copies of this command line as worker processes until they have all
/// stopped, and returns the exit code: the first failure's, else success.
///
/// A SIGINT or SIGTERM is passed on to every process as SIGTERM (the second one makes their
/// shutdown cold, as for one worker). A process that exits on its own with success (a
/// remote `shutdown`) stays stopped; one that fails or is killed is restarted, after a
/// delay that grows while it keeps dying young. A set-up error ([`exit::USAGE`]: bad
/// settings, an unreachable broker at start; a worker that fails later exits with
/// [`exit::WORKER_FAILED`]) would only repeat, so it stops them all.
pub async fn supervise(processes: NonZeroUsize) -> anyhow::Result<i32> {
    let program = std::env::current_exe()
        .map_err(|err| anyhow::anyhow!("cannot find the celeriac executable to start: {err}"))?;
    let runtime_threads = std::env::var_os(RUNTIME_THREADS_ENV)
        .is_none()
        .then(|| super::worker::cpus_per_process(processes));
    let mut supervisor = Supervisor {
        program,
        runtime_threads,
        stop_requests: tokio::sync::watch::Sender::new(0),
        events: JoinSet::new(),
        pending_restarts: Vec::new(),
        restart_delay: vec![FIRST_RESTART_DELAY; processes.get()],
        stopping: false,
        code: exit::SUCCESS,
    };
    for index in (1..=processes.get()).filter_map(NonZeroUsize::new) {
        supervisor.start(index)?;
    }
    let mut signals = super::worker::count_signals();
    loop {
        if supervisor.events.is_empty() {
            break;
        }
        tokio::select! {
            changed = signals.changed() => {
                if changed.is_err() {
                    continue;
                }
                supervisor.stop_all();
            }
            Some(event) = supervisor.events.join_next() => {
                match event {
                    Ok(event) => supervisor.handle(event)?,
                    Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    // A restart called off by the shutdown.
                    Err(err) if err.is_cancelled() => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(supervisor.code)
}

enum Event {
    Exited {
        index: NonZeroUsize,
        pid: u32,
        started: Instant,
        status: std::io::Result<ExitStatus>,
    },
    RestartDue(NonZeroUsize),
}

struct Supervisor {
    program: std::path::PathBuf,
    /// The [`RUNTIME_THREADS_ENV`] each process gets; `None` when the operator set it.
    runtime_threads: Option<usize>,
    /// How many times every process was asked to stop; each process's task passes each
    /// request on as one SIGTERM.
    stop_requests: tokio::sync::watch::Sender<u32>,
    events: JoinSet<Event>,
    /// The waits before restarts, called off when the supervisor stops.
    pending_restarts: Vec<tokio::task::AbortHandle>,
    restart_delay: Vec<Duration>,
    stopping: bool,
    code: i32,
}

impl Supervisor {
    fn start(&mut self, index: NonZeroUsize) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        command
            .args(std::env::args_os().skip(1))
            .env(PROCESS_INDEX_ENV, index.to_string())
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches only the supervisor,
            // which passes it on once (a second copy would make the shutdown cold).
            .process_group(0);
        if let Some(threads) = self.runtime_threads {
            command.env(RUNTIME_THREADS_ENV, threads.to_string());
        }
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            // If the supervisor is killed, its processes shut down warmly instead of running on
            // unsupervised (the main thread, which outlives them, spawns every one).
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|err| anyhow::anyhow!("cannot start worker process {index}: {err}"))?;
        let pid = child.id().unwrap_or_default();
        tracing::info!("worker process {index} started (pid {pid})");
        let started = Instant::now();
        let mut stop_requests = self.stop_requests.subscribe();
        self.events.spawn(async move {
            let mut passed_on = *stop_requests.borrow_and_update();
            loop {
                tokio::select! {
                    status = child.wait() => {
                        return Event::Exited { index, pid, started, status };
                    }
                    Ok(()) = stop_requests.changed() => {
                        let requested = *stop_requests.borrow_and_update();
                        for _ in passed_on..requested {
                            terminate(&child, index);
                        }
                        passed_on = requested;
                    }
                }
            }
        });
        Ok(())
    }

    fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::RestartDue(index) if !self.stopping => self.start(index)?,
            Event::RestartDue(_) => {}
            Event::Exited {
                index,
                pid,
                started,
                status,
            } => self.exited(index, pid, started, status),
        }
        Ok(())
    }

    fn exited(
        &mut self,
        index: NonZeroUsize,
        pid: u32,
        started: Instant,
        status: std::io::Result<ExitStatus>,
    ) {
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                tracing::error!("worker process {index} (pid {pid}): waiting for it failed: {err}");
                self.fail(exit::WORKER_FAILED);
                return;
            }
        };
        if status.success() {
            tracing::info!("worker process {index} (pid {pid}) stopped");
            return;
        }
        if self.stopping {
            tracing::warn!("worker process {index} (pid {pid}) stopped: {status}");
            self.fail(status.code().unwrap_or(exit::WORKER_FAILED));
            return;
        }
        if status.code() == Some(exit::USAGE) {
            tracing::error!(
                "worker process {index} (pid {pid}) could not start ({status}); stopping the others"
            );
            self.fail(exit::USAGE);
            self.stop_all();
            return;
        }
        let slot = index.get() - 1;
        let delay = if started.elapsed() < STABLE_AFTER {
            self.restart_delay[slot]
        } else {
            FIRST_RESTART_DELAY
        };
        self.restart_delay[slot] = (delay * 2).min(MAX_RESTART_DELAY);
        tracing::error!(
            "worker process {index} (pid {pid}) died ({status}); restarting it in {} s",
            delay.as_secs()
        );
        let restart = self.events.spawn(async move {
            tokio::time::sleep(delay).await;
            Event::RestartDue(index)
        });
        self.pending_restarts
            .retain(|pending| !pending.is_finished());
        self.pending_restarts.push(restart);
    }

    /// Keeps the first failure's exit code.
    fn fail(&mut self, code: i32) {
        if self.code == exit::SUCCESS {
            self.code = code;
        }
    }

    /// Has SIGTERM sent to every running process: the first makes a warm shutdown, the
    /// next a cold one, as signals to a single worker do.
    fn stop_all(&mut self) {
        if !self.stopping {
            tracing::warn!("worker: Warm shutdown (passed on to every worker process)");
        }
        self.stopping = true;
        for restart in self.pending_restarts.drain(..) {
            restart.abort();
        }
        self.stop_requests.send_modify(|count| *count += 1);
    }
}

/// Sends SIGTERM to `child`, from the task that waits for it: a child it has reaped has no
/// id any more, so a pid the kernel gave to another process is never signalled.
fn terminate(child: &tokio::process::Child, index: NonZeroUsize) {
    let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill has no memory effects; `pid` is an unreaped child of this process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == -1 {
        tracing::debug!(
            "worker process {index} (pid {pid}): SIGTERM failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn each_process_is_a_node_of_its_own() {
        assert_eq!(indexed_nodename("celery@box", index(2)), "celery-2@box");
        assert_eq!(indexed_nodename("w@a@b", index(1)), "w-1@a@b");
        assert_eq!(indexed_nodename("plain", index(3)), "plain-3");
    }

    #[test]
    fn each_process_serves_metrics_on_its_own_port() {
        let addr: std::net::SocketAddr = "127.0.0.1:9808".parse().unwrap();
        assert_eq!(indexed_metrics_addr(addr, index(1)).unwrap(), addr);
        assert_eq!(indexed_metrics_addr(addr, index(3)).unwrap().port(), 9810);
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(indexed_metrics_addr(any, index(4)).unwrap().port(), 0);
        let last: std::net::SocketAddr = "127.0.0.1:65535".parse().unwrap();
        assert!(indexed_metrics_addr(last, index(2)).is_err());
    }
}
