//! Log lines for long-running commands: one line per action and per reconcile, as text for
//! people or JSON for log shippers. Lines go to stderr; secrets never reach here (messages
//! are built from plans and diagnostics, which hold none).

use std::io::Write;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Logger {
    pub format: LogFormat,
}

impl Logger {
    pub fn info(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("info", event, msg, fields);
    }
    pub fn warn(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("warn", event, msg, fields);
    }
    pub fn error(&self, event: &str, msg: &str, fields: &[(&str, String)]) {
        self.write("error", event, msg, fields);
    }

    fn write(&self, level: &str, event: &str, msg: &str, fields: &[(&str, String)]) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let line = line(self.format, &ts, level, event, msg, fields);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

/// One event as one line: in JSON, `ts`, `level`, `event` and `msg` are the line's own (a
/// field of the same name is left out); in text, a message of several lines (an ssh error
/// explained) has its line breaks escaped, as a field's value with spaces is quoted.
fn line(
    format: LogFormat,
    ts: &str,
    level: &str,
    event: &str,
    msg: &str,
    fields: &[(&str, String)],
) -> String {
    match format {
        LogFormat::Json => {
            let mut v = serde_json::json!({ "ts": ts, "level": level, "event": event, "msg": msg });
            for (k, val) in fields {
                if !matches!(*k, "ts" | "level" | "event" | "msg") {
                    v[*k] = val.clone().into();
                }
            }
            v.to_string()
        }
        LogFormat::Text => {
            let msg = msg.replace('\r', "\\r").replace('\n', "\\n");
            let mut s = format!("{ts} {level:<5} {msg}");
            for (k, val) in fields {
                if val.contains(char::is_whitespace) || val.is_empty() {
                    s.push_str(&format!(" {k}={val:?}"));
                } else {
                    s.push_str(&format!(" {k}={val}"));
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LogFormat, line};

    /// Each event is one line, whatever its message holds; JSON keeps the line's own keys.
    #[test]
    fn an_event_is_one_line() {
        let fields = [("integration", "nas".to_string()), ("msg", "x".to_string())];
        let text = line(
            LogFormat::Text,
            "T",
            "error",
            "engine",
            "ssh failed:\n  ssh:\n    host_key: \"k\"\r",
            &fields[..1],
        );
        assert!(!text.contains(['\n', '\r']), "{text}");
        assert!(text.contains("ssh failed:\\n  ssh:"), "{text}");
        let json = line(LogFormat::Json, "T", "error", "engine", "a\nb", &fields);
        assert!(!json.contains('\n'), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["msg"], "a\nb");
        assert_eq!(v["integration"], "nas");
    }
}
