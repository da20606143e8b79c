//! The standard OpenTelemetry variables (`OTEL_*`), read as a layer just above the defaults: a
//! deployment's usual tracing setup applies, and our file, variables and flags still win.
//! `OTEL_SDK_DISABLED=true` turns export off whatever else says.

use figment::value::{Dict, Value};

/// The standard kill switch.
pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

fn first<'a>(env: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| {
        env.iter()
            .find(|(key, value)| key == name && !value.trim().is_empty())
            .map(|(_, value)| value.trim())
    })
}

/// Our settings from the `OTEL_*` variables, as strings for figment's lossy extraction.
pub fn layer(env: &[(String, String)]) -> Dict {
    let mut dict = Dict::new();
    let mut set = |key: &str, value: &str| {
        dict.insert(key.to_string(), Value::from(value.to_string()));
    };
    let protocol = first(
        env,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ],
    );
    if let Some(protocol) = protocol {
        set("otlp_protocol", protocol);
    }
    if let Some(endpoint) = first(env, &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
        set("otlp_endpoint", endpoint);
    } else if let Some(base) = first(env, &["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
        // The generic endpoint is a base URL; over HTTP the signal's path is appended.
        if protocol == Some("http/protobuf") {
            set(
                "otlp_endpoint",
                &format!("{}/v1/traces", base.trim_end_matches('/')),
            );
        } else {
            set("otlp_endpoint", base);
        }
    }
    for (key, names) in [
        (
            "otlp_headers",
            &[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ][..],
        ),
        (
            "otlp_timeout_ms",
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
        ),
        ("service_name", &["OTEL_SERVICE_NAME"]),
        ("trace_sampler", &["OTEL_TRACES_SAMPLER"]),
        ("trace_sampler_arg", &["OTEL_TRACES_SAMPLER_ARG"]),
        ("span_queue_size", &["OTEL_BSP_MAX_QUEUE_SIZE"]),
        ("span_batch_size", &["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"]),
        ("span_batch_delay_ms", &["OTEL_BSP_SCHEDULE_DELAY"]),
    ] {
        if let Some(value) = first(env, names) {
            set(key, value);
        }
    }
    dict
}

/// Whether `OTEL_SDK_DISABLED` turns tracing off.
pub fn sdk_disabled(env: &[(String, String)]) -> bool {
    first(env, &[SDK_DISABLED]).is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// `name=value,…` resource attributes as pairs (malformed entries skipped, as the spec says).
pub fn resource_attributes(text: Option<&str>) -> Vec<(String, String)> {
    text.map(|text| {
        text.split(',')
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_string(),
                    percent_encoding::percent_decode_str(v.trim())
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            })
            .filter(|(k, _)| !k.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_generic_endpoint_gets_the_traces_path_over_http() {
        let dict = layer(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]));
        assert_eq!(
            dict["otlp_endpoint"].as_str(),
            Some("http://collector:4318/v1/traces")
        );
        let dict = layer(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317",
        )]));
        assert_eq!(
            dict["otlp_endpoint"].as_str(),
            Some("http://collector:4317")
        );
        let dict = layer(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]));
        assert_eq!(dict["otlp_endpoint"].as_str(), Some("http://b:4317"));
    }

    #[test]
    fn sampler_batching_and_resource_come_from_the_standard_names() {
        let vars = env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_SERVICE_NAME", "dispatcher-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,bad,k8s.pod.name=a%20b",
            ),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        let dict = layer(&vars);
        assert_eq!(dict["trace_sampler"].as_str(), Some("traceidratio"));
        assert_eq!(dict["trace_sampler_arg"].as_str(), Some("0.25"));
        assert_eq!(dict["span_queue_size"].as_str(), Some("100"));
        assert_eq!(dict["service_name"].as_str(), Some("dispatcher-eu"));
        assert!(sdk_disabled(&vars));
        assert_eq!(
            resource_attributes(first(&vars, &["OTEL_RESOURCE_ATTRIBUTES"])),
            vec![
                ("deployment.environment".to_string(), "prod".to_string()),
                ("k8s.pod.name".to_string(), "a b".to_string())
            ]
        );
    }
}
