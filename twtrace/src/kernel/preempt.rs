//! PREEMPT_RT kernels: what changes for twtrace there, said once at start-up.
//!
//! On PREEMPT_RT, timer callbacks run in a per-CPU thread (`ktimers/N`, SCHED_FIFO 1) and
//! softirqs in threads too. What twtrace's correlation relies on still holds: a timer's detach
//! and re-arm happen under the timer base's raw spinlock (not preemptible, even on RT), so the
//! kernel-side re-arm proof stands; a timer's expiry is still detached and run on the CPU that
//! owns its wheel; the kprobe tier keys saved arguments by CPU and thread. What does not hold
//! as on other kernels: between an expiry's detach and its callback (`expire_timers()` drops
//! the lock there, with interrupts on) the timer thread can be preempted by a higher-priority
//! thread (threaded interrupt handlers run at SCHED_FIFO 50) that does timewait work on the
//! same CPU, or for longer than the settle window. twtrace then settles that detach as an early
//! death before its expiry shows up: the socket's exit reads `unknown` instead of `expired`.

/// Whether the running kernel is PREEMPT_RT (`/sys/kernel/realtime` is 1 there).
pub fn is_preempt_rt() -> bool {
    std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1")
}

/// The start-up notice on a PREEMPT_RT kernel.
pub const RT_NOTICE: &str = "PREEMPT_RT kernel: timers expire in the ktimers threads, which \
higher-priority threads (threaded interrupts) may preempt between a timer's detach and its \
callback; an expiry delayed so past the settle window (or by timewait work on the same CPU) is \
reported as an `unknown` exit instead of `expired`. Births, re-arms, reuses and the function \
tier are unaffected.";
