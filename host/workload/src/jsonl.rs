//! JSON Lines in the workload's format.

use crate::Event;
use std::io::BufRead;

/// A line that is not a workload event.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// Reading failed.
    #[error("reading events: {0}")]
    Io(#[from] std::io::Error),
    /// A line did not parse.
    #[error("line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// Parses one line.
pub fn parse_line(line: &str) -> Result<Event, serde_json::Error> {
    serde_json::from_str(line)
}

/// Formats one event exactly as the Python generator does (4 decimals).
pub fn to_json_line(e: &Event) -> String {
    let xs: Vec<String> = e.x.iter().map(|v| format!("{v:.4}")).collect();
    format!(
        r#"{{"key":"{}","ts":{},"x":[{}],"label":{}}}"#,
        e.key,
        e.ts,
        xs.join(","),
        e.label
    )
}

/// Reads a whole JSON Lines file of events.
pub fn read_jsonl(path: &std::path::Path) -> Result<Vec<Event>, JsonlError> {
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(&line).map_err(|source| JsonlError::Parse {
            line: i + 1,
            source,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_reference_format() {
        let line = r#"{"key":"u413","ts":1700000000000,"x":[0.7972,-1.4446,0.5168,2.3411,-0.2012,5.9850,-0.7386,2.1683],"label":0}"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.key, "u413");
        assert_eq!(e.x[5], 5.985);
        assert_eq!(to_json_line(&e), line);
        assert!(parse_line(r#"{"key":"u1","ts":1}"#).is_err());
    }
}
