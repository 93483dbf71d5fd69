//! The JSON log line, written straight into the formatter's buffer.
//!
//! The same shape as `tracing-subscriber`'s JSON format with `flatten_event` and the current
//! span (`{"timestamp","level",<fields>,"target","span":{<fields>,"name"}}`), without its cost:
//! that format keeps a span's fields as a JSON object, so every `Span::record` parses and
//! re-serialises them and every line parses them again (a quarter of the hub's CPU on a
//! cached read, see `docs/performance.md`). Here a span's fields are kept as the members of a
//! JSON object without the braces: recording a field appends to them, a line copies them.

use std::fmt::{self, Write as _};

use chrono::{Datelike, Timelike};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats span fields as JSON object members (`"a":1,"b":"x"`), appended to on record.
#[derive(Default)]
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut members = Members::new(&mut writer);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut members = Members::new(&mut current.fields);
        members.first = members.out.is_empty();
        fields.record(&mut members);
        members.result
    }
}

/// One JSON line per event.
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
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
        // Records bridged from the `log` crate name their target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let now = chrono::Utc::now();
        write!(
            writer,
            "{{\"timestamp\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\",\"level\":\"{}\"",
            now.year(),
            now.month(),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.nanosecond() % 1_000_000_000 / 1000,
            meta.level()
        )?;
        let mut members = Members::new(&mut writer);
        members.first = false;
        event.record(&mut members);
        members.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<N>>()
                && !fields.is_empty()
            {
                writer.write_str(fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes `value` as a JSON string.
fn string(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

/// A field visitor writing `"name":value` members, comma-separated.
struct Members<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> Members<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Self {
            out,
            first: true,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        // Fields of records bridged from `log` are in the metadata already.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.out.write_char(',')?;
            }
            self.first = false;
            string(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: fmt::Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| string(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities.
        if value.is_finite() {
            self.member(field, |out| write!(out, "{value}"));
        } else {
            self.member(field, |out| write!(out, "\"{value}\""));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value}")?;
            out.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::telemetry::CapturedLog;

    fn lines(log: impl FnOnce()) -> Vec<Value> {
        let captured = CapturedLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        captured
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn a_line_holds_the_event_and_its_span_with_fields_recorded_later() {
        let lines = lines(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                route = tracing::field::Empty,
                n = 3u64,
            );
            let _entered = span.enter();
            span.record("route", "/api/v1/agents/{id}");
            tracing::info!(
                status = 200u16,
                latency_ms = 1.5,
                ok = true,
                "request finished"
            );
            tracing::warn!(value = f64::NAN, "odd");
        });
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request finished");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(line["span"]["n"], 3);
        assert_eq!(line["span"]["route"], "/api/v1/agents/{id}");
        assert_eq!(line["span"]["name"], "request");
        let stamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert_eq!(lines[1]["value"], "NaN");
    }

    #[test]
    fn every_string_is_escaped() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        let lines = lines(|| {
            let span = tracing::info_span!("s", text = nasty);
            let _entered = span.enter();
            tracing::info!(text = nasty, debug = ?nasty, "{nasty}");
        });
        let line = &lines[0];
        assert_eq!(line["text"], nasty);
        assert_eq!(line["message"], nasty);
        assert_eq!(line["debug"], format!("{nasty:?}"));
        assert_eq!(line["span"]["text"], nasty);
    }

    #[test]
    fn a_line_outside_any_span_has_no_span() {
        let lines = lines(|| tracing::error!("alone"));
        assert_eq!(lines[0]["message"], "alone");
        assert!(lines[0].get("span").is_none());
    }
}
