//! The shutdown spool: session-record writes that the store could not take before the process
//! exited, kept in a local file and replayed at the next start (DESIGN.md's data promise:
//! "flushed or spooled to a local file replayed at next start").
//!
//! # Format
//!
//! One [`RecordWrite`] per line as JSON (`{"start": {...}}` or `{"end": {...}}`), oldest first.
//! It holds what the `sessions` table would hold (ids, times, endpoint, provider, counters, the
//! caller's IP before anonymisation) and never audio, payloads, transcripts or keys.
//!
//! # What callers must keep
//!
//! - [`write()`] replaces the file atomically (temporary file, fsync, rename), so a crash while
//!   spooling leaves the previous spool or the new one, never half of one.
//! - [`read()`] never fails on a bad line: it skips it, counts it, and keeps a copy of the whole
//!   file beside it (`<file>.bad-<unix seconds>`) so nothing is lost to a parse error.
//! - The file is deleted only once the replayed writes have reached the store (the server's
//!   job); writes are idempotent, so replaying one that did land is harmless.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};

use voxroute_actors::record::RecordWrite;

/// Default spool file, relative to the working directory.
pub const DEFAULT_SPOOL_FILE: &str = "voxroute-spool.jsonl";

/// Why the spool could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading, writing, syncing or renaming the file failed.
    #[error("spool file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A write could not be encoded (a broken invariant of the record types).
    #[error("cannot encode a record write: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What [`read()`] found.
#[derive(Debug, Default)]
pub struct SpoolContents {
    /// The writes, oldest first.
    pub writes: Vec<RecordWrite>,
    /// Lines that did not parse (skipped; the file was copied aside, see [`read()`]).
    pub bad_lines: usize,
    /// Where the copy of a file with bad lines was kept.
    pub bad_copy: Option<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the spool at `path`; a missing file is an empty spool.
///
/// # Errors
/// The file exists but cannot be read.
pub fn read(path: &Path) -> Result<SpoolContents, SpoolError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SpoolContents::default());
        }
        Err(error) => return Err(io_error(path)(error)),
    };
    let mut contents = SpoolContents::default();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RecordWrite>(&line) {
            Ok(write) => contents.writes.push(write),
            Err(error) => {
                // Only the position and the parser's message: the line itself is not logged.
                tracing::error!(file = %path.display(), line = index + 1, %error, "skipping a spool line that does not parse");
                contents.bad_lines += 1;
            }
        }
    }
    if contents.bad_lines > 0 {
        let secs = chrono::Utc::now().timestamp();
        let mut copy = path.as_os_str().to_owned();
        copy.push(format!(".bad-{secs}"));
        let copy = PathBuf::from(copy);
        std::fs::copy(path, &copy).map_err(io_error(&copy))?;
        contents.bad_copy = Some(copy);
    }
    Ok(contents)
}

/// Replaces the spool at `path` with `writes` (atomically; see the module docs).
///
/// # Errors
/// The file cannot be written, synced or renamed into place.
pub fn write(path: &Path, writes: &[RecordWrite]) -> Result<(), SpoolError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut text = String::new();
    for write in writes {
        text.push_str(&serde_json::to_string(write)?);
        text.push('\n');
    }
    let mut file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    Ok(())
}

/// Deletes the spool at `path`; a missing file is not an error.
///
/// # Errors
/// The file exists and cannot be removed.
pub fn remove(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;
    use voxroute_actors::close_reason::SessionCloseReason;
    use voxroute_actors::record::{SessionEnd, SessionStart, Transport};

    use super::*;

    fn writes() -> Vec<RecordWrite> {
        let id = Uuid::now_v7();
        vec![
            RecordWrite::Start(SessionStart {
                id,
                api_key_id: Some(Uuid::now_v7()),
                endpoint: "/v1/telephony/twilio".into(),
                transport: Transport::Telephony,
                route: None,
                provider: "echo".into(),
                client_ip: Some("192.0.2.7".parse().unwrap()),
                started_at: Utc::now(),
            }),
            RecordWrite::End(SessionEnd {
                id,
                ended_at: Utc::now(),
                duration_ms: 2_000,
                close_reason: SessionCloseReason::ClientHangup,
                provider: "echo".into(),
                providers_tried: vec!["echo".into()],
                audio_in_ms: 1_980,
                audio_out_ms: 1_960,
                failovers: 0,
                first_response_ms: Some(12),
                usage: Vec::new(),
            }),
        ]
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("voxroute-spool-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_round_trip_and_remove_is_idempotent() {
        let dir = temp_dir();
        let path = dir.join("spool.jsonl");
        assert!(read(&path).unwrap().writes.is_empty(), "missing = empty");
        let writes = writes();
        write(&path, &writes).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.writes, writes);
        assert_eq!(back.bad_lines, 0);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_lines_are_skipped_and_the_file_is_kept_aside() {
        let dir = temp_dir();
        let path = dir.join("spool.jsonl");
        let writes = writes();
        write(&path, &writes).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "{not json\n{\"start\": 42}\n\n");
        std::fs::write(&path, &text).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.writes, writes, "the good lines survive");
        assert_eq!(back.bad_lines, 2);
        let copy = back.bad_copy.expect("a copy of a file with bad lines");
        assert_eq!(std::fs::read_to_string(copy).unwrap(), text);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
