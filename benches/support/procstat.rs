//! Process probes read from `/proc/<pid>/stat` (user + system CPU time in clock ticks)
//! and `/proc/<pid>/status` (`VmRSS`, `Threads`), plus raising this process's
//! `RLIMIT_NOFILE` so thousands of client sockets fit (a spawned daemon inherits it).
//!
//! It deliberately does not sample per-thread data or use `perf`: tick resolution
//! (usually 10 ms) is plenty over multi-second windows.

use std::fs;
use std::io;

/// One reading of a process's counters.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// utime alone (user mode), in clock ticks.
    pub user_ticks: u64,
    pub rss_kb: u64,
    pub threads: u64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads the counters of `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user_ticks, system_ticks) = parse_stat_cpu(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/PID/stat format",
        )
    })?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_ticks: user_ticks + system_ticks,
        user_ticks,
        rss_kb: field("VmRSS:"),
        threads: field("Threads:"),
    })
}

/// The whole machine's CPU time from the first line of `/proc/stat`, in clock ticks:
/// (busy = everything but idle and iowait, total).
pub fn machine_ticks() -> io::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no cpu line in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// `VmRSS` of `pid` in kB (reads `/proc/<pid>/status` only; cheap enough to poll every
/// few milliseconds).
pub fn vm_rss_kb(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// utime (field 14) and stime (field 15); the command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14 → index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// CPU time between two samples, in µs.
pub fn cpu_us_between(a: &ProcSample, b: &ProcSample) -> f64 {
    ticks_to_us(b.cpu_ticks.saturating_sub(a.cpu_ticks))
}

/// User-mode CPU time between two samples, in µs.
pub fn user_us_between(a: &ProcSample, b: &ProcSample) -> f64 {
    ticks_to_us(b.user_ticks.saturating_sub(a.user_ticks))
}

/// Clock ticks → µs.
pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1_000_000.0 / clk_tck() as f64
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit
/// (`rlim_t`: 32 bits on 32-bit glibc, 64 elsewhere).
pub fn raise_nofile_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is
        // always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// This process's user + system CPU time from `getrusage`, µs (µs resolution; used to
/// cross-check the tick counts read from /proc).
pub fn own_rusage_cpu_us() -> io::Result<f64> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Ok(us(ru.ru_utime) + us(ru.ru_stime))
}
