//! The `bpfckpt` command line.

use bpfckpt::ckpt::Outcome;
use bpfckpt::ckpt::dirty::Choice;
use bpfckpt::ckpt::report::{J, Reporter};
use bpfckpt::ckpt::storage::parse_size;
use bpfckpt::ckpt::{Engine, HoldChoice, Options, RestorePath, Waiter, demo, gate};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Checkpoint and restore a running process's memory in place, with eBPF
/// programs that run in the target's own context.
///
/// A target asks for a checkpoint by creating TRIGGER_DIR/ready_to_checkpoint
/// and waits for TRIGGER_DIR/checkpoint_complete; it asks for a restore with
/// ready_to_restore and waits for restore_complete; it may repeat that cycle
/// any number of times. After each restore every captured byte (heap, .bss,
/// .data, anonymous and shared-anonymous mappings; never stacks) equals the
/// checkpoint. Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE).
#[derive(Parser)]
#[command(name = "bpfckpt", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start PROGRAM and serve its checkpoint/restore requests until it
    /// exits; exit with its status.
    Run {
        #[command(flatten)]
        common: Common,
        /// The program and its arguments (after `--`).
        #[arg(required = true, last = true, value_name = "PROGRAM [ARGS]...")]
        command: Vec<String>,
    },
    /// Wait for a process to exec (by name and/or executable path), serve it
    /// until it exits, then wait for the next one.
    Watch {
        #[command(flatten)]
        common: Common,
        /// Process name (comm, first 15 bytes) to wait for.
        #[arg(long, required_unless_present = "exe")]
        comm: Option<String>,
        /// Executable path to wait for (its name is matched, then the path).
        #[arg(long)]
        exe: Option<PathBuf>,
        /// Serve one process, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Run the bundled demo workload through several cycles, damaging its
    /// memory between checkpoint and restore, and report what happened.
    Demo {
        #[command(flatten)]
        common: Common,
        /// Checkpoint/restore cycles.
        #[arg(long, default_value_t = 5)]
        cycles: u32,
    },
    /// Check what this kernel allows: lockdown, tracefs, BTF, and each BPF
    /// helper bpfckpt relies on.
    Doctor,
    #[command(hide = true, name = "__gate")]
    Gate {
        fifo: PathBuf,
        parent: i32,
        #[arg(last = true)]
        command: Vec<String>,
    },
    #[command(hide = true, name = "__watchdog")]
    Watchdog,
    /// Hidden, for tests: inject a system call into a process and print
    /// each step; `--pause-after STEP` waits there for ever (to be killed).
    #[command(hide = true, name = "__inject-selftest")]
    InjectSelftest {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        tid: Option<i32>,
        /// getpid, or uffd (a userfaultfd fetched into bpfckpt).
        #[arg(long, default_value = "getpid")]
        call: String,
        /// uffd: register ADDR:LEN (hex) of the target for write-protect.
        #[arg(long, value_parser = parse_range)]
        register: Option<(u64, u64)>,
        /// stopped, seized, saved, changed, stepped or restored.
        #[arg(long, value_parser = parse_step)]
        pause_after: Option<bpfckpt::ckpt::inject::Step>,
        /// Write the syscall instruction into the text even where one
        /// could be borrowed.
        #[arg(long)]
        force_poke: bool,
        /// Without the watchdog that undoes the injection if this dies.
        #[arg(long)]
        no_watchdog: bool,
        /// uffd: keep the userfaultfd until standard input ends.
        #[arg(long)]
        hold: bool,
    },
    #[command(hide = true, name = "__demo-target")]
    DemoTarget {
        #[arg(long)]
        cycles: u32,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RestorePathArg {
    /// BPF if the kernel allows bpf_probe_write_user, else user space.
    Auto,
    /// Only bpf_probe_write_user (an error where the kernel refuses it).
    Bpf,
    /// process_vm_writev and /proc/PID/mem, with the target held.
    User,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirtyArg {
    /// soft-dirty where the kernel keeps it, else userfaultfd, else off.
    Auto,
    /// /proc/PID/clear_refs and pagemap's soft-dirty bit.
    SoftDirty,
    /// A userfaultfd in the target with asynchronous write protection.
    Uffd,
    /// No re-arming: every page ever written is copied at each checkpoint.
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum HoldArg {
    /// In its open if the trigger directory is private, else SIGSTOP.
    Auto,
    /// SIGSTOP (and SIGCONT) at every request that needs the target held.
    Signal,
    /// In its trigger open (fanotify permission events); an error if the
    /// kernel cannot.
    Open,
}

#[derive(Args)]
struct Common {
    /// Directory of the protocol's marker files (absolute).
    #[arg(long, default_value = "/tmp", value_name = "DIR")]
    trigger_dir: PathBuf,
    /// How restores write memory back.
    #[arg(long, value_enum, default_value = "auto")]
    restore_path: RestorePathArg,
    /// Most kernel memory the page store may use (e.g. 512M, 2G); a
    /// checkpoint that needs more fails with an error.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Capture anonymous memory only (heap, .bss, anonymous and shared
    /// anonymous mappings), not writable private file mappings (.data).
    #[arg(long)]
    anon_only: bool,
    /// Try every page of every captured region at each checkpoint, instead
    /// of only the pages the target has written (tracked with the
    /// page-fault tracepoints). Slower; the reference the tracking is
    /// tested against.
    #[arg(long)]
    exhaustive: bool,
    /// How the pages dirtied since the last request are told apart, so that
    /// a checkpoint copies, and a restore writes, only those: `auto` takes
    /// soft-dirty bits where the kernel keeps them, else a userfaultfd with
    /// asynchronous write protection (created inside the target by a system
    /// call bpfckpt injects with ptrace while the target is held, then closed
    /// there again: its registers, signal mask and code are put back exactly,
    /// and it keeps no extra descriptor); `uffd` or `soft-dirty` insist on
    /// one; `off` copies every page ever written at each checkpoint. A target
    /// that cannot be injected (already traced, Yama) gets `off`, with one
    /// line saying why.
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    dirty_tracking: DirtyArg,
    /// How a target is held while bpfckpt works on a request: `auto` holds
    /// a one-thread target inside its trigger open (a fanotify permission
    /// event on the trigger directory: no signal, a short wait) when
    /// --trigger-dir is private (not writable by group or others, since
    /// every open there waits for bpfckpt), and stops it with SIGSTOP
    /// otherwise (and always a multi-threaded one).
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    hold: HoldArg,
    /// One JSON object per event on stdout.
    #[arg(long)]
    json: bool,
    /// Report every checkpoint and restore.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

impl Common {
    fn options(&self) -> Options {
        Options {
            trigger_dir: self.trigger_dir.clone(),
            restore_path: match self.restore_path {
                RestorePathArg::Auto => RestorePath::Auto,
                RestorePathArg::Bpf => RestorePath::Bpf,
                RestorePathArg::User => RestorePath::User,
            },
            max_memory: self.max_memory,
            anon_only: self.anon_only,
            exhaustive: self.exhaustive,
            dirty: match self.dirty_tracking {
                DirtyArg::Auto => Choice::Auto,
                DirtyArg::SoftDirty => Choice::SoftDirty,
                DirtyArg::Uffd => Choice::Uffd,
                DirtyArg::Off => Choice::Off,
            },
            hold: match self.hold {
                HoldArg::Auto => HoldChoice::Auto,
                HoldArg::Signal => HoldChoice::Signal,
                HoldArg::Open => HoldChoice::Open,
            },
            report: Reporter {
                json: self.json,
                verbose: self.verbose,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfckpt: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn status_code(st: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(s)) => ExitCode::from(128 + s as u8),
        _ => ExitCode::from(1),
    }
}

fn outcome_code(o: Outcome) -> ExitCode {
    match o {
        Outcome::Exited(st) => status_code(st),
        Outcome::Gone => ExitCode::SUCCESS,
        Outcome::Interrupted(sig) => ExitCode::from(128 + sig as u8),
    }
}

fn run(cli: Cli) -> bpfckpt::Result<ExitCode> {
    match cli.cmd {
        Cmd::Doctor => {
            let checks = bpfckpt::doctor::run();
            print!("{}", bpfckpt::doctor::format(&checks));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gate {
            fifo,
            parent,
            command,
        } => Ok(ExitCode::from(gate::exec_when_released(
            &fifo, parent, &command,
        ))),
        Cmd::Watchdog => Ok(ExitCode::from(bpfckpt::ckpt::watchdog::watchdog_main())),
        Cmd::InjectSelftest {
            pid,
            tid,
            call,
            register,
            pause_after,
            force_poke,
            no_watchdog,
            hold,
        } => Ok(ExitCode::from(bpfckpt::ckpt::inject::selftest_main(
            &bpfckpt::ckpt::inject::SelftestArgs {
                pid,
                tid,
                call,
                register,
                pause_after,
                force_poke,
                watchdog: !no_watchdog,
                hold,
            },
        ))),
        Cmd::DemoTarget { cycles, dir } => Ok(ExitCode::from(demo::target(cycles, &dir))),
        Cmd::Run { common, command } => {
            let mut engine = Engine::new(common.options())?;
            let o = serve_command(&mut engine, &command)?;
            finish(&engine);
            Ok(outcome_code(o))
        }
        Cmd::Demo { common, cycles } => {
            let mut opts = common.options();
            opts.report.verbose = opts.report.verbose.max(1);
            let mut engine = Engine::new(opts)?;
            let exe = std::env::current_exe()?;
            let command = vec![
                exe.display().to_string(),
                "__demo-target".into(),
                "--cycles".into(),
                cycles.to_string(),
                "--dir".into(),
                common.trigger_dir.display().to_string(),
            ];
            let o = serve_command(&mut engine, &command)?;
            demo::report(&engine, &o);
            Ok(outcome_code(o))
        }
        Cmd::Watch {
            common,
            comm,
            exe,
            once,
        } => {
            let mut engine = Engine::new(common.options())?;
            let name = match (&comm, &exe) {
                (Some(c), _) => c.clone(),
                (None, Some(p)) => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                (None, None) => unreachable!("clap requires --comm or --exe"),
            };
            engine.set_watch(&name)?;
            engine.report().event(
                "watch",
                &format!("waiting for `{name}` to start"),
                &[("comm", J::S(&name))],
            );
            loop {
                match engine.wait_for_exec(exe.as_deref())? {
                    Err(sig) => {
                        finish(&engine);
                        return Ok(ExitCode::from(128 + sig as u8));
                    }
                    Ok(pid) => match engine.serve(pid, Waiter::Pid, || {
                        bpfckpt::ckpt::engine::cont(pid);
                        Ok(())
                    }) {
                        Ok(Outcome::Interrupted(sig)) => {
                            finish(&engine);
                            return Ok(ExitCode::from(128 + sig as u8));
                        }
                        Ok(_) => engine.report().event(
                            "target_gone",
                            &format!("pid {pid} is gone"),
                            &[("pid", J::N(pid as u64))],
                        ),
                        Err(e) => engine.report().warn(&format!("serving pid {pid}: {e}")),
                    },
                }
                if once {
                    finish(&engine);
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

fn parse_step(s: &str) -> Result<bpfckpt::ckpt::inject::Step, String> {
    bpfckpt::ckpt::inject::Step::parse(s).ok_or_else(|| format!("no step `{s}`"))
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let hex =
        |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|e| e.to_string());
    let (a, l) = s.split_once(':').ok_or("expected ADDR:LEN")?;
    Ok((hex(a)?, hex(l)?))
}

fn serve_command(engine: &mut Engine, command: &[String]) -> bpfckpt::Result<Outcome> {
    let (child, release) = gate::spawn(command)?;
    let pid = child.id() as i32;
    // The probes are configured for the pid first, then it may exec: not
    // one trigger of the new program can be missed.
    let o = engine.serve(pid, Waiter::Child(child), || release.release())?;
    if let Outcome::Exited(st) = &o {
        use std::os::unix::process::ExitStatusExt;
        let how = match (st.code(), st.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            _ => format!("ended ({st})"),
        };
        engine.report().event(
            "target_exit",
            &format!("pid {pid} {how}"),
            &[
                ("pid", J::N(pid as u64)),
                ("code", J::I(st.code().map_or(-1, i64::from))),
                ("signal", J::I(st.signal().map_or(0, i64::from))),
            ],
        );
    }
    Ok(o)
}

fn finish(engine: &Engine) {
    engine.report().summary("all targets", &engine.total);
}
