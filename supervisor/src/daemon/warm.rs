//! The daemon's pool of prepared jails: shims started ahead of demand, each in its fresh
//! namespaces with the root's fixed part built, `lo` up and its cgroup made, waiting for a
//! spec ([`Engine::prepare`]). A job takes one and the shim completes only what depends on
//! the request; the pool refills behind it, in the background.
//!
//! A pool of fresh jails, not of recycled ones: a jail serves one job and is destroyed
//! after it, like any. One that waited too long, or was prepared before a policy reload, is
//! destroyed unused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use toolbox_spec::Network;
use tracing::{debug, warn};

use super::Daemon;
use crate::engine::{network_slot, DraftKey, Prestarted};

/// A job that took a prepared jail and is still running this long after has started: the
/// pool prepares the next one even though it has not ended.
pub const REFILL_AFTER: Duration = Duration::from_millis(50);

/// How long past [`REFILL_AFTER`] the refill waits for the job's spec to be the draft (a job
/// that fails before its spec ends, and refills, sooner).
pub const DRAFT_WAIT: Duration = Duration::from_secs(1);

/// After a failed preparation, how long the pool waits before trying again.
const BACKOFF: Duration = Duration::from_secs(5);

/// The pool's bounds.
#[derive(Debug, Clone, Copy)]
pub struct WarmOptions {
    /// Prepared jails held at most, of all networks together (0: no pool).
    pub size: usize,
    /// A prepared jail older than this is destroyed, not used.
    pub max_age: Duration,
}

#[derive(Debug)]
pub struct Pool {
    options: WarmOptions,
    state: Mutex<State>,
    /// Signalled when a preparation ends (for [`Pool::close`]).
    prepared: std::sync::Condvar,
    /// Wakes the refill: a jail was taken, the pool was emptied, or it is closing.
    refill: Notify,
    seq: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first.
    ready: Vec<Warm>,
    /// Bumped when what a prepared jail was made under changes (a policy reload): jails of
    /// an older epoch are destroyed.
    epoch: u64,
    /// The networks jobs have asked for (isolated, host): the pool prepares those.
    wanted: [bool; 2],
    /// The network the last job asked for: the one a full pool makes room for.
    last: Option<Network>,
    /// The kinds of the jobs that took a jail (or found none) since the pool last prepared
    /// one for them, the most recent last: what it prepares next, replacing what was used.
    to_replace: Vec<DraftKey>,
    /// The kind of the last job on each network: what the pool prepares for when it has no
    /// job's jail to replace (one expired).
    last_kind: [Option<DraftKey>; 2],
    /// Jails taken by jobs, and jails destroyed unused, since the start.
    taken: u64,
    destroyed: u64,
    closed: bool,
    /// The pool's thread is making a jail: [`Pool::close`] waits for it to be done.
    preparing: bool,
}

#[derive(Debug)]
struct Warm {
    jail: Prestarted,
    network: Network,
    /// The kind of job it was laid out for (from that kind's last job), if any.
    kind: Option<DraftKey>,
    made: Instant,
    epoch: u64,
}

/// The jail the pool prepares next ([`Pool::next`]).
struct Next {
    network: Network,
    kind: Option<DraftKey>,
    epoch: u64,
}

/// What `/metrics` shows of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub ready_isolated: usize,
    pub ready_host: usize,
    pub taken: u64,
    pub destroyed: u64,
}

impl Pool {
    pub fn new(options: WarmOptions) -> Pool {
        Pool {
            options,
            state: Mutex::new(State {
                // Jobs have no network unless a policy says otherwise.
                wanted: [true, false],
                ..State::default()
            }),
            prepared: std::sync::Condvar::new(),
            refill: Notify::new(),
            seq: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A prepared jail for a job of `kind`, fresh and alive, if the pool has one: one laid
    /// out for that kind if there is, else the oldest for its network; taken out of the pool
    /// for good, back at the CPU priority jobs have. The pool prepares the next, for this
    /// kind, once the job is under way ([`Pool::job_ended`]), or at once if it had none to
    /// give.
    pub fn take(&self, kind: &DraftKey) -> Option<Prestarted> {
        if self.options.size == 0 {
            return None;
        }
        let network = kind.network;
        let (taken, stale) = {
            let mut state = self.state();
            state.wanted[network_slot(network)] = true;
            state.last = Some(network);
            state.last_kind[network_slot(network)] = Some(kind.clone());
            if state.to_replace.len() >= self.options.size {
                state.to_replace.remove(0);
            }
            state.to_replace.push(kind.clone());
            let stale = self.expire(&mut state);
            let at = state
                .ready
                .iter()
                .position(|warm| warm.kind.as_ref() == Some(kind))
                .or_else(|| state.ready.iter().position(|warm| warm.network == network));
            let taken = at.map(|at| state.ready.remove(at));
            (taken, stale)
        };
        destroy(stale);
        let Some(mut warm) = taken else {
            // None ready: prepare now (a burst outran the pool).
            self.refill.notify_one();
            return None;
        };
        if !warm.jail.alive() {
            warn!("a prepared jail's shim was gone when a job came for it; the job gets a new one");
            destroy(vec![warm]);
            self.refill.notify_one();
            return None;
        }
        self.state().taken += 1;
        warm.jail.wake();
        Some(warm.jail)
    }

    /// A job that took a prepared jail has ended, or has run for [`REFILL_AFTER`]: prepare
    /// the next one now, not while that job was starting (on 2 CPUs a jail prepared beside
    /// a starting one takes the CPU and the kernel's namespace locks from it).
    pub fn job_ended(&self) {
        self.refill.notify_one();
    }

    /// Destroy every prepared jail: what they were prepared under changed (a policy
    /// reload). The pool refills with new ones.
    pub fn invalidate(&self) {
        let gone = {
            let mut state = self.state();
            state.epoch += 1;
            std::mem::take(&mut state.ready)
        };
        if !gone.is_empty() {
            debug!(
                jails = gone.len(),
                "destroying the prepared jails of before the reload"
            );
        }
        self.count_destroyed(gone.len());
        destroy(gone);
        self.refill.notify_one();
    }

    /// Destroy every prepared jail and prepare no more (the daemon stops).
    /// A jail the pool's thread is making as the daemon stops is destroyed by that thread
    /// ([`Pool::add`]): this waits for it (a few milliseconds), so that the daemon does not
    /// exit between the making of its cgroup and its removal.
    pub fn close(&self) {
        let gone = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.ready)
        };
        self.count_destroyed(gone.len());
        // Here, not on another thread: the daemon is about to exit.
        drop(gone);
        self.refill.notify_one();
        let state = self.state();
        let waited = self
            .prepared
            .wait_timeout_while(state, Duration::from_secs(10), |state| state.preparing);
        if waited.is_ok_and(|(_, timeout)| timeout.timed_out()) {
            warn!("a jail being prepared as the daemon stopped did not finish in 10 s");
        }
    }

    pub fn counts(&self) -> PoolCounts {
        let state = self.state();
        let ready = |network| {
            state
                .ready
                .iter()
                .filter(|warm| warm.network == network)
                .count()
        };
        PoolCounts {
            ready_isolated: ready(Network::Isolated),
            ready_host: ready(Network::Host),
            taken: state.taken,
            destroyed: state.destroyed,
        }
    }

    fn count_destroyed(&self, n: usize) {
        self.state().destroyed += n as u64;
    }

    /// Take out the jails too old or of an older epoch (for the caller to destroy).
    fn expire(&self, state: &mut State) -> Vec<Warm> {
        let now = Instant::now();
        let epoch = state.epoch;
        let max_age = self.options.max_age;
        let (keep, stale): (Vec<Warm>, Vec<Warm>) = std::mem::take(&mut state.ready)
            .into_iter()
            .partition(|warm| warm.epoch == epoch && now - warm.made < max_age);
        state.ready = keep;
        state.destroyed += stale.len() as u64;
        stale
    }

    /// Which network the next jail is for, if the pool is short of one: the wanted network
    /// with the fewest ready, below its share of the bound (shared evenly among the wanted
    /// networks). The kind of job it is laid out for: the latest that took a jail on that
    /// network and has no replacement yet, else the last job's there. And the epoch it is
    /// prepared under. A pool full of one network when the last job asked for another gives
    /// up the oldest of the first's (returned, for the caller to destroy) to make room.
    fn next(&self) -> (Option<Next>, Vec<Warm>) {
        let mut state = self.state();
        if state.closed || self.options.size == 0 {
            return (None, Vec::new());
        }
        let wanted: Vec<Network> = [Network::Isolated, Network::Host]
            .into_iter()
            .filter(|network| state.wanted[network_slot(*network)])
            .collect();
        let share = (self.options.size / wanted.len().max(1)).max(1);
        let ready = |state: &State, network: Network| {
            state.ready.iter().filter(|w| w.network == network).count()
        };
        let Some(short) = wanted
            .iter()
            .map(|&network| (ready(&state, network), network))
            .filter(|(ready, _)| *ready < share)
            .min_by_key(|(ready, _)| *ready)
            .map(|(_, network)| network)
        else {
            return (None, Vec::new());
        };
        let mut evicted = Vec::new();
        if state.ready.len() >= self.options.size {
            // Full: room is made only for the network the last job asked for, from one at or
            // past its share (with a bound of 1, the one there) — so a pool too small for
            // both follows the jobs rather than trading one for the other on every wake.
            if state.last != Some(short) {
                return (None, Vec::new());
            }
            let over = [Network::Isolated, Network::Host]
                .into_iter()
                .find(|&network| network != short && ready(&state, network) >= share);
            let oldest = over.and_then(|over| state.ready.iter().position(|w| w.network == over));
            match oldest {
                Some(at) => {
                    evicted.push(state.ready.remove(at));
                    state.destroyed += 1;
                }
                None => return (None, Vec::new()),
            }
        }
        let kind = match state.to_replace.iter().rposition(|k| k.network == short) {
            Some(at) => Some(state.to_replace.remove(at)),
            None => state.last_kind[network_slot(short)].clone(),
        };
        let next = Next {
            network: short,
            kind,
            epoch: state.epoch,
        };
        (Some(next), evicted)
    }

    /// When the oldest ready jail expires, if any is ready.
    fn next_expiry(&self) -> Option<Instant> {
        let state = self.state();
        state
            .ready
            .iter()
            .map(|warm| warm.made + self.options.max_age)
            .min()
    }

    /// Add a jail prepared under `epoch`; destroyed instead if the epoch has moved on, the
    /// pool closed or it is full (then false).
    fn add(&self, jail: Prestarted, network: Network, kind: Option<DraftKey>, epoch: u64) -> bool {
        let rejected = {
            let mut state = self.state();
            if state.closed || state.epoch != epoch || state.ready.len() >= self.options.size {
                state.destroyed += 1;
                Some(jail)
            } else {
                state.ready.push(Warm {
                    jail,
                    network,
                    kind,
                    made: Instant::now(),
                    epoch,
                });
                None
            }
        };
        match rejected {
            Some(jail) => {
                // Here, on the pool's own thread (it may block): when the pool is closing
                // the daemon is about to exit, and a task left to another thread might
                // never run.
                drop(jail);
                false
            }
            None => true,
        }
    }
}

/// Destroy jails off the async threads: each drop kills a shim and waits for it, then
/// removes its cgroup.
fn destroy(jails: Vec<Warm>) {
    if !jails.is_empty() {
        tokio::task::spawn_blocking(move || drop(jails));
    }
}

/// Keep the pool filled, one jail at a time, until it closes, on a thread of its own that
/// lives as long as the daemon: a jail's PID 1 is killed when the thread that started it
/// ends (`PR_SET_PDEATHSIG`, which follows the thread, not the process), so prepared jails
/// must not be started on the runtime's blocking threads, which end when idle.
pub fn start(daemon: Arc<Daemon>) -> std::io::Result<()> {
    if daemon.pool.options.size == 0 {
        return Ok(());
    }
    // Driven by the daemon's runtime (its timers, and the reactor the shims' pipes are
    // registered with), polled on this thread.
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("toolbox-pool".into())
        .spawn(move || {
            runtime.block_on(keep_filled(daemon));
            // Closed (the daemon stops), but jobs in jails started here may still be
            // draining: this thread ends only with the process.
            loop {
                std::thread::park();
            }
        })
        .map(drop)
}

async fn keep_filled(daemon: Arc<Daemon>) {
    let pool = &daemon.pool;
    if pool.options.size == 0 {
        return;
    }
    loop {
        let notified = pool.refill.notified();
        let stale = {
            let mut state = pool.state();
            if state.closed {
                return;
            }
            pool.expire(&mut state)
        };
        destroy(stale);
        let (next, evicted) = pool.next();
        destroy(evicted);
        let Some(Next {
            network,
            kind,
            epoch,
        }) = next
        else {
            // Full: wait for a take, a reload, or the oldest jail's expiry.
            match pool.next_expiry() {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), notified).await;
                }
                None => notified.await,
            }
            continue;
        };
        let seq = pool.seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = pool.state();
            if state.closed {
                return;
            }
            state.preparing = true;
        }
        // Here, on this thread (see `start`): it blocks only the pool.
        let failed = match daemon.engine.prepare(seq, network, kind.as_ref()) {
            Ok(jail) if jail.warm() => {
                // A kind with no draft yet (its job's spec still to come) got a jail like
                // any other.
                let kind = kind.filter(|_| jail.drafted());
                pool.add(jail, network, kind, epoch);
                None
            }
            // The cgroup could not be made: a job's record would say why; here, the log.
            Ok(jail) => Some(jail.error().unwrap_or("no jail").to_string()),
            Err(err) => Some(err.to_string()),
        };
        pool.state().preparing = false;
        pool.prepared.notify_all();
        if let Some(why) = failed {
            warn!("preparing a jail for the pool failed ({why}); jobs start cold meanwhile");
            tokio::time::sleep(BACKOFF).await;
        }
    }
}
