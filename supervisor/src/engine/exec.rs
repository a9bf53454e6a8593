//! A command exec'd into a running job's jail ([`Engine::exec`]): PID 1 forks it as it
//! forked the tool (see the shim's `exec`), and this supervises it as [`supervise`] does a
//! job — capped output as events, its own timeout, idle timeout and cancel — with what
//! differs: it is ended through its own process group (by PID 1, on the control socket),
//! and it ends for good when its main process does. What it left in the background lives on
//! in the jail until the job ends; its pipes are read until they are empty, never waited
//! on, so a grandchild holding them cannot hold up the answer.

use super::*;
use crate::spawn::{ExecPipes, ExecPort};

/// How long the pipes are read after the command's end was reported, waiting for their
/// end: what it wrote before it ended is in them already; if something it left running
/// holds them, what is there is taken then, and nothing more.
const EXEC_DRAIN: Duration = Duration::from_millis(100);

impl Engine {
    /// Run `plan` (an exec'd command's: the job's plan with the command's argv, env,
    /// directory and limits) in the jail behind `port`, to its end.
    pub async fn exec(
        &self,
        plan: JobPlan,
        port: &ExecPort,
        stdin: std::os::fd::OwnedFd,
        events: UnboundedSender<Event>,
        cancel: impl Future<Output = Cancel> + Send,
    ) -> JobResult {
        let span = info_span!("exec", id = %plan.job_id);
        let started = Instant::now();
        let mut result = self.blank_result(&plan);
        result.policy.sha256 = plan.policy_sha256.get().to_string();
        let spec = toolbox_spec::ExecSpec {
            argv: plan.argv.clone(),
            env: plan.env.clone(),
            cwd: plan.workspace.to_string_lossy().into_owned(),
        };
        let pipes = match port.exec(&spec, stdin) {
            Ok(pipes) => pipes,
            Err(err) => {
                return fail(
                    result,
                    started,
                    format!("the job is not running any more ({err})"),
                )
            }
        };
        let _ = events.send(Event::Started {
            job_id: plan.job_id.clone(),
        });
        let run = supervise_exec(pipes, port, &plan, &events, cancel)
            .instrument(span)
            .await;
        result.duration_ms = started.elapsed().as_millis() as u64;
        // The job's cgroup measures the whole job, not this command: its usage is not
        // this record's to report.
        fill(&mut result, &run, &CgroupStats::default());
        result.pids_peak = 0;
        if run.tool.is_none() && run.ending.is_none() && result.error.is_none() {
            // No end was reported: the job ended, and took the command with it.
            result.status = JobStatus::Signaled;
            result.signal = Some(Signal::SIGKILL as i32);
            result.exit_code = exit::SIGNAL_BASE + Signal::SIGKILL as i32;
            result.reason = Some("its job ended, and every process in the jail with it".into());
        } else {
            result.reason = explain(&plan, &run, &CgroupStats::default(), &result);
        }
        result
    }
}

async fn supervise_exec(
    pipes: ExecPipes,
    port: &ExecPort,
    plan: &JobPlan,
    events: &UnboundedSender<Event>,
    cancel: impl Future<Output = Cancel> + Send,
) -> Run {
    let mut run = Run::default();
    let [mut out_cap, mut err_cap] = cappers(plan);
    let ExecPipes {
        id,
        mut stdout,
        mut stderr,
        mut status,
    } = pipes;
    let mut out_in = Intake::new();
    let mut err_in = Intake::new();
    let mut out = Some(&mut stdout);
    let mut err = Some(&mut stderr);
    let mut status = Some(BufReader::new(&mut status).lines());
    let mut cancel: Option<Pin<Box<dyn Future<Output = Cancel> + Send + '_>>> =
        Some(Box::pin(cancel));
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let timeout = tokio::time::sleep(plan.limits.timeout);
    tokio::pin!(timeout);
    let idle_deadline = || {
        plan.idle_timeout
            .map_or(far, |idle| tokio::time::Instant::now() + idle)
    };
    let idle = tokio::time::sleep_until(idle_deadline());
    tokio::pin!(idle);
    // The grace period, then the drain once the end is known.
    let escalation = tokio::time::sleep_until(far);
    tokio::pin!(escalation);
    let mut draining = false;

    loop {
        if out.is_none() && err.is_none() && status.is_none() {
            break;
        }
        let running = status.is_some();
        tokio::select! {
            took = out_in.take(&mut out, out_cap.keeps_only_tail()), if out.is_some() => match took {
                Ok(Took::Read(0)) | Err(_) => out = None,
                Ok(took) => {
                    idle.as_mut().reset(idle_deadline());
                    pass(events, Stream::Stdout, &mut out_cap, &out_in, took, plan.output_whole)
                }
            },
            took = err_in.take(&mut err, err_cap.keeps_only_tail()), if err.is_some() => match took {
                Ok(Took::Read(0)) | Err(_) => err = None,
                Ok(took) => {
                    idle.as_mut().reset(idle_deadline());
                    pass(events, Stream::Stderr, &mut err_cap, &err_in, took, plan.output_whole)
                }
            },
            line = next_line(&mut status), if status.is_some() => match line {
                Ok(Some(line)) => record_status(&mut run, &line),
                Ok(None) | Err(_) => {
                    // Its end, or the job's: PID 1 closed the pipe.
                    status = None;
                    draining = true;
                    escalation.as_mut().reset(tokio::time::Instant::now() + EXEC_DRAIN);
                }
            },
            _ = &mut timeout, if running && run.ending.is_none() => {
                debug!("timeout: SIGTERM to the exec'd command");
                run.ending = Some(Ending::Timeout);
                port.signal(id, libc::SIGTERM);
                escalation.as_mut().reset(tokio::time::Instant::now() + plan.limits.grace);
            }
            _ = &mut idle, if running && run.ending.is_none() => {
                debug!("idle timeout: SIGTERM to the exec'd command");
                run.ending = Some(Ending::Idle);
                port.signal(id, libc::SIGTERM);
                escalation.as_mut().reset(tokio::time::Instant::now() + plan.limits.grace);
            }
            how = until(&mut cancel), if cancel.is_some() && running && run.ending.is_none() => {
                cancel = None;
                debug!("cancelled: SIGTERM to the exec'd command");
                run.ending = Some(Ending::Cancelled(how.exit_code));
                port.signal(id, libc::SIGTERM);
                let grace = how.grace.map_or(plan.limits.grace, |g| g.min(plan.limits.grace));
                escalation.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            _ = &mut escalation => {
                if draining {
                    // Something it left running holds its pipes. What is in them now was
                    // written by its end (and maybe a little since): take that, then stop.
                    take_last(events, Stream::Stdout, &mut out, &mut out_in, &mut out_cap, plan);
                    take_last(events, Stream::Stderr, &mut err, &mut err_in, &mut err_cap, plan);
                } else {
                    debug!("grace period over: SIGKILL to the exec'd command");
                    run.killed = true;
                    port.signal(id, libc::SIGKILL);
                    escalation.as_mut().reset(far);
                }
            }
        }
    }
    run.stdout = finish(events, Stream::Stdout, out_cap, plan.output_whole);
    run.stderr = finish(events, Stream::Stderr, err_cap, plan.output_whole);
    run
}
