//! Process metrics under their standard names (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_start_time_seconds`), read from
//! `/proc` at scrape time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Linux reports CPU times in USER_HZ, which is 100 on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads this process's figures from `/proc/self`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reading {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

impl Reading {
    /// Reads `/proc`; figures that cannot be read are 0.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields = stat_fields(&stat);
        // After the name: state is field 3, so utime (14) is index 11, stime 12, starttime 19.
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = (field(11) + field(12)) / TICKS_PER_SECOND;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib * 1024.0);
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count) as f64;
        Self {
            cpu_seconds,
            resident_bytes,
            open_fds,
            start_time_seconds: boot_time + field(19) / TICKS_PER_SECOND,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        let cpu = ConstCounter::new(reading.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                reading.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                reading.open_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                reading.start_time_seconds,
            ),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_is_plausible() {
        let reading = Reading::now();
        assert!(reading.resident_bytes > 1_000_000.0, "{reading:?}");
        assert!(reading.open_fds >= 3.0, "{reading:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            reading.start_time_seconds <= now + 1.0 && reading.start_time_seconds > now - 86_400.0,
            "{reading:?}"
        );
    }

    #[test]
    fn command_names_with_spaces_do_not_shift_fields() {
        let fields = stat_fields("42 (a b) S 1 2 3");
        assert_eq!(fields, vec!["S", "1", "2", "3"]);
    }
}
