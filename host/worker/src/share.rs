//! A fair share of the host's CPU between tenants.
//!
//! Each worker thread charges the CPU time of its rounds (processing and producing, on its
//! own thread) to its tenant. While more than one tenant is busy, each earns CPU at an
//! equal rate (`cores / (busy tenants + 1)` CPU-seconds per second: the extra share is the
//! host's own, for the Kafka clients, the broker, checkpoints and the API, which no tenant
//! is charged for), with at most one period's worth banked. A round runs only while its
//! tenant's balance is not negative, and is charged ahead with what the thread's last
//! round took, so a tenant's threads cannot all start long rounds at once. So a tenant with many busy pipelines gets as much CPU as a
//! tenant with one, not as much per pipeline; and when it is the only busy tenant it gets
//! everything, untouched.
//!
//! Pausing is how the share is enforced, so a worker is never held waiting for another
//! tenant's worker: a plugin that runs to its deadline costs its own tenant the time
//! afterwards, and nothing while it runs. A pause is as long as the tenant's whole debt
//! takes to repay at its rate (so its threads together keep to the rate however many
//! there are), at most [`MAX_PAUSE`]; a stopped worker wakes at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a tenant stays busy after its last round, and how much CPU time (per core it
/// may use) it may bank while it keeps within its share.
const PERIOD: Duration = Duration::from_millis(100);

/// The longest pause of one round (a larger debt is paid over several rounds).
pub const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The CPU share of every tenant of a host. One per process; see the module docs.
#[derive(Debug)]
pub struct CpuShare {
    cores: f64,
    tenants: Mutex<HashMap<i64, Account>>,
}

#[derive(Debug)]
struct Account {
    /// CPU-seconds the tenant may still spend (negative: its debt).
    balance: f64,
    /// When the balance was last brought up to date.
    at: Instant,
    /// When the tenant last charged a round.
    last_round: Instant,
    /// CPU time charged so far, and time spent waiting for a turn.
    spent: Duration,
    waited: Duration,
}

/// A worker's place in a [`CpuShare`]: the share and the tenant its rounds are charged to.
#[derive(Debug, Clone)]
pub struct TenantShare {
    /// The host's share.
    pub share: Arc<CpuShare>,
    /// The tenant the worker's rounds are charged to.
    pub tenant: i64,
}

impl CpuShare {
    /// A share of `cores` CPUs.
    pub fn new(cores: usize) -> Arc<CpuShare> {
        Arc::new(CpuShare {
            cores: cores.max(1) as f64,
            tenants: Mutex::default(),
        })
    }

    /// A share of this machine's CPUs.
    pub fn of_this_machine() -> Arc<CpuShare> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Before a round of `tenant`'s: how long to wait before it may run. Zero: it runs
    /// now, and `expected` (the worker's last round's CPU time) is charged ahead, so the
    /// tenant's other threads see it at once. Ask again after waiting.
    pub fn admit(&self, tenant: i64, expected: Duration) -> Duration {
        self.admit_at(tenant, expected, Instant::now())
    }

    /// After a round [`CpuShare::admit`] let run with `expected`: charges what it really
    /// spent.
    pub fn settle(&self, tenant: i64, expected: Duration, spent: Duration) {
        self.settle_at(tenant, expected, spent, Instant::now());
    }

    fn admit_at(&self, tenant: i64, expected: Duration, now: Instant) -> Duration {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let (a, rate) = self.account(&mut tenants, tenant, now);
        if a.balance < 0.0 {
            // Never zero: zero means "run".
            let wait = Duration::from_secs_f64(-a.balance / rate)
                .clamp(Duration::from_micros(100), MAX_PAUSE);
            a.waited += wait.min(Duration::from_millis(20));
            return wait;
        }
        a.balance -= expected.as_secs_f64();
        Duration::ZERO
    }

    fn settle_at(&self, tenant: i64, expected: Duration, spent: Duration, now: Instant) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let (a, _) = self.account(&mut tenants, tenant, now);
        a.balance += expected.as_secs_f64() - spent.as_secs_f64();
        a.spent += spent;
    }

    /// A tenant's CPU time charged so far and its time spent waiting for turns (about:
    /// each wait is counted up to the 20 ms a worker sleeps at once), while it stays known
    /// (a tenant quiet for a second is forgotten).
    pub fn usage(&self, tenant: i64) -> (Duration, Duration) {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .get(&tenant)
            .map_or((Duration::ZERO, Duration::ZERO), |a| (a.spent, a.waited))
    }

    /// The tenant's account brought up to `now`, and its rate (CPU-seconds per second).
    /// Alone, a tenant's balance stays full: everything is its share.
    fn account<'a>(
        &self,
        tenants: &'a mut HashMap<i64, Account>,
        tenant: i64,
        now: Instant,
    ) -> (&'a mut Account, f64) {
        tenants.retain(|id, a| *id == tenant || now.duration_since(a.last_round) < PERIOD * 10);
        let busy = tenants
            .iter()
            .filter(|(id, a)| **id == tenant || now.duration_since(a.last_round) < PERIOD)
            .count()
            .max(1);
        // One share more than there are busy tenants: the host's own threads (Kafka
        // clients, the embedded broker, checkpoints, the API) are charged to no tenant.
        let rate = self.cores / (busy + 1) as f64;
        let bank = PERIOD.as_secs_f64() * rate;
        let a = tenants.entry(tenant).or_insert(Account {
            balance: bank,
            at: now,
            last_round: now,
            spent: Duration::ZERO,
            waited: Duration::ZERO,
        });
        a.balance = if busy == 1 {
            bank
        } else {
            (a.balance + now.saturating_duration_since(a.at).as_secs_f64() * rate).min(bank)
        };
        a.at = a.at.max(now);
        a.last_round = a.last_round.max(now);
        (a, rate)
    }
}

/// The OS priority (nice value) of a worker thread whose rounds are charged to a tenant:
/// below the host's own threads (Kafka clients, the embedded broker, checkpoints, the
/// API), which every tenant's latency depends on, so a tenant's long plugin call yields to
/// them at once instead of holding a core until its deadline. Within the tenants, the
/// shares decide.
pub const TENANT_NICE: i32 = 5;

/// Lowers this thread's OS priority to [`TENANT_NICE`] (Linux: the nice value is per
/// thread). A failure is logged, not fatal: the shares still hold.
pub(crate) fn lower_this_thread() {
    if let Err(e) = rustix::process::setpriority_process(None, TENANT_NICE) {
        tracing::warn!("could not lower a tenant worker's priority: {e}");
    }
}

/// The CPU time this thread has used so far (the wall clock where the OS cannot say).
pub(crate) fn thread_cpu() -> Duration {
    cpu_time::ThreadTime::try_now()
        .map(|t| t.as_duration())
        .unwrap_or_else(|_| START.elapsed())
}

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates `threads` of each tenant, each round costing 2 ms of CPU, on a machine
    /// of `cores`, for `secs`; returns each tenant's CPU and the most threads of tenant 1
    /// that ran at once.
    fn simulate(cores: usize, threads: &[(i64, usize)], secs: f64) -> (HashMap<i64, f64>, usize) {
        let share = CpuShare::new(cores);
        let t0 = Instant::now();
        let round = Duration::from_millis(2);
        // Each thread: its tenant and when it may ask to run next. The simulation steps in
        // rounds of 2 ms; up to `cores` threads run per step, in turn.
        let mut next: Vec<(i64, Duration)> = threads
            .iter()
            .flat_map(|&(t, n)| std::iter::repeat_n((t, Duration::ZERO), n))
            .collect();
        let mut used: HashMap<i64, f64> = HashMap::new();
        let (mut clock, mut turn, mut most) = (Duration::ZERO, 0usize, 0);
        while clock.as_secs_f64() < secs {
            let (mut ran, mut ran_1) = (0, 0);
            for k in 0..next.len() {
                let i = (turn + k) % next.len();
                if ran == cores {
                    break;
                }
                if next[i].1 > clock {
                    continue;
                }
                let tenant = next[i].0;
                let wait = share.admit_at(tenant, round, t0 + clock);
                if !wait.is_zero() {
                    next[i].1 = clock + wait.max(Duration::from_millis(1));
                    continue;
                }
                ran += 1;
                ran_1 += usize::from(tenant == 1);
                *used.entry(tenant).or_default() += round.as_secs_f64();
                share.settle_at(tenant, round, round, t0 + clock + round);
                next[i].1 = clock + round;
            }
            most = most.max(ran_1);
            turn += 1;
            clock += round;
        }
        (used, most)
    }

    #[test]
    fn a_tenant_with_many_busy_threads_gets_what_a_tenant_with_one_gets() {
        // Tenant 1: eight busy pipelines; tenant 2: one. Two cores for 10 s.
        let (used, _) = simulate(2, &[(1, 8), (2, 1)], 10.0);
        let (a, b) = (used[&1], used[&2]);
        // Tenant 1 keeps to two thirds of a core (two cores, two busy tenants and the
        // host's share). Without the share it would take eight ninths
        // of 20 CPU-seconds and tenant 2 a ninth (2.2 s); with it, tenant 2 gets more than
        // twice that even in this simulation, whose whole-step slots let tenant 1's
        // threads take both cores in some steps (an OS would time-slice them with tenant
        // 2's instead).
        assert!(
            a > 6.2 && a < 7.2,
            "tenant 1 got {a:.2} s, tenant 2 {b:.2} s"
        );
        assert!(b > 5.0, "tenant 2 got {b:.2} s, tenant 1 {a:.2} s");
        // Alone, tenant 1 has both cores.
        let (used, most) = simulate(2, &[(1, 8)], 10.0);
        assert!(used[&1] > 19.9, "{used:?}");
        assert_eq!(most, 2);
    }

    #[test]
    fn a_tenant_alone_is_never_paused() {
        let share = CpuShare::new(2);
        let t0 = Instant::now();
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_millis(i);
            let expected = Duration::from_millis(5);
            assert_eq!(share.admit_at(7, expected, at), Duration::ZERO);
            share.settle_at(7, expected, Duration::from_millis(50), at);
        }
    }

    #[test]
    fn a_long_call_is_paid_for_afterwards() {
        let share = CpuShare::new(2);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(share.admit_at(2, ms(1), t0).is_zero());
        share.settle_at(2, ms(1), ms(1), t0);
        // Tenant 1 ran a 5 s plugin call while tenant 2 is busy too: it waits its debt of
        // 5 s less its bank, at its rate of two thirds of a core.
        assert!(share.admit_at(1, ms(1), t0 + ms(10)).is_zero());
        share.settle_at(1, ms(1), Duration::from_secs(5), t0 + ms(20));
        let wait = share.admit_at(1, ms(1), t0 + ms(30));
        assert!((wait.as_secs_f64() - 7.39).abs() < 0.02, "{wait:?}");
        // Tenant 2 is within its share and runs.
        assert!(share.admit_at(2, ms(1), t0 + ms(40)).is_zero());
        // A debt past the longest pause is paid in several waits.
        share.settle_at(1, ms(0), Duration::from_secs(60), t0 + ms(50));
        assert_eq!(share.admit_at(1, ms(1), t0 + ms(60)), MAX_PAUSE);
    }
}
