//! Reader for the ADFA-LD archive: one trace per `.txt` file, whitespace-separated syscall
//! numbers, in `Training_Data_Master/`, `Validation_Data_Master/` and
//! `Attack_Data_Master/<attack type>/` (under any leading folder such as `ADFA-LD/`).

use std::io::Read;
use std::path::{Path, PathBuf};

use bulkhead_detector::DetectorError;
use bulkhead_detector::MAX_SYSCALL;

/// One process's syscall trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Path of the file inside the archive.
    pub name: String,
    /// Attack type (the folder under `Attack_Data_Master/`), `None` for normal traces.
    pub attack: Option<String>,
    /// Syscall numbers in order.
    pub syscalls: Vec<u16>,
}

/// The three parts of ADFA-LD, each sorted by file name so runs are reproducible.
#[derive(Debug, Clone, Default)]
pub struct AdfaDataset {
    /// Normal traces to learn from.
    pub training: Vec<Trace>,
    /// Normal traces held out for evaluation.
    pub validation: Vec<Trace>,
    /// Attack traces.
    pub attack: Vec<Trace>,
}

const TRAINING: &str = "Training_Data_Master";
const VALIDATION: &str = "Validation_Data_Master";
const ATTACK: &str = "Attack_Data_Master";

/// Parses one trace file's text.
pub fn parse_trace(archive: &Path, file: &str, text: &str) -> Result<Vec<u16>, DetectorError> {
    text.split_whitespace()
        .enumerate()
        .map(|(position, token)| {
            token
                .parse::<u16>()
                .ok()
                .filter(|&n| n <= MAX_SYSCALL)
                .ok_or_else(|| DetectorError::BadTrace {
                    archive: archive.to_path_buf(),
                    file: file.to_string(),
                    position,
                    token: token.to_string(),
                    max: MAX_SYSCALL,
                })
        })
        .collect()
}

/// Reads the ADFA-LD zip at `path`. Fails naming the file on any unreadable or malformed
/// trace, and if any of the three parts is empty.
pub fn read_adfa_zip(path: &Path) -> Result<AdfaDataset, DetectorError> {
    let archive_err = |reason: String| DetectorError::Archive {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| archive_err(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| archive_err(e.to_string()))?;
    let mut data = AdfaDataset::default();
    let mut text = String::new();
    for index in 0..zip.len() {
        let mut entry = zip
            .by_index(index)
            .map_err(|e| archive_err(format!("entry {index}: {e}")))?;
        let name = entry.name().to_string();
        if entry.is_dir() || !name.ends_with(".txt") {
            continue;
        }
        let parts: Vec<&str> = name.split('/').collect();
        let Some(top) = parts
            .iter()
            .position(|p| [TRAINING, VALIDATION, ATTACK].contains(p))
        else {
            continue;
        };
        text.clear();
        entry
            .read_to_string(&mut text)
            .map_err(|e| DetectorError::TraceRead {
                archive: path.to_path_buf(),
                file: name.clone(),
                reason: e.to_string(),
            })?;
        let syscalls = parse_trace(path, &name, &text)?;
        let (bucket, attack) = match parts[top] {
            TRAINING => (&mut data.training, None),
            VALIDATION => (&mut data.validation, None),
            // An attack file directly under Attack_Data_Master has no type folder.
            _ => (
                &mut data.attack,
                Some(if parts.len() > top + 2 {
                    parts[top + 1].to_string()
                } else {
                    String::new()
                }),
            ),
        };
        bucket.push(Trace {
            name,
            attack,
            syscalls,
        });
    }
    for (part, folder) in [
        (&mut data.training, TRAINING),
        (&mut data.validation, VALIDATION),
        (&mut data.attack, ATTACK),
    ] {
        if part.is_empty() {
            return Err(DetectorError::MissingPart {
                archive: path.to_path_buf(),
                folder,
            });
        }
        part.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(data)
}

/// Where the integration test and the CLI look for the public dataset by default.
pub fn default_adfa_path() -> PathBuf {
    PathBuf::from("/work/shared/datasets/ADFA-LD.zip")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a zip with the given `(name, contents)` entries into a fresh temp file.
    pub(crate) fn write_zip(tag: &str, entries: &[(&str, &str)]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "bulkhead-detector-{tag}-{}.zip",
            std::process::id()
        ));
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in entries {
            if name.ends_with('/') {
                zip.add_directory(*name, opts)
                    .unwrap_or_else(|e| panic!("dir {name}: {e}"));
            } else {
                zip.start_file(*name, opts)
                    .unwrap_or_else(|e| panic!("start {name}: {e}"));
                zip.write_all(body.as_bytes())
                    .unwrap_or_else(|e| panic!("write {name}: {e}"));
            }
        }
        zip.finish()
            .unwrap_or_else(|e| panic!("finish {}: {e}", path.display()));
        path
    }

    #[test]
    fn reads_the_three_parts_with_attack_types() {
        let path = write_zip(
            "ok",
            &[
                ("ADFA-LD/", ""),
                ("ADFA-LD/Training_Data_Master/UTD-2.txt", "5 3 6\n"),
                ("ADFA-LD/Training_Data_Master/UTD-1.txt", "1 2  3 4 "),
                ("ADFA-LD/Validation_Data_Master/UVD-1.txt", "7 7"),
                ("ADFA-LD/Attack_Data_Master/Adduser_1/UAD-1.txt", "9 9 9"),
                ("ADFA-LD/readme.md", "not a trace"),
            ],
        );
        let data = read_adfa_zip(&path).unwrap_or_else(|e| panic!("read tiny zip: {e}"));
        std::fs::remove_file(&path).ok();
        assert_eq!(
            data.training.len(),
            2,
            "training traces: {:?}",
            data.training
        );
        assert_eq!(
            data.training[0].syscalls,
            vec![1, 2, 3, 4],
            "sorted by name, whitespace tolerant"
        );
        assert_eq!(data.validation[0].syscalls, vec![7, 7]);
        assert_eq!(data.attack[0].attack.as_deref(), Some("Adduser_1"));
        assert_eq!(data.validation[0].attack, None);
    }

    #[test]
    fn bad_token_names_file_and_position() {
        let path = write_zip(
            "bad",
            &[
                ("Training_Data_Master/a.txt", "1 2"),
                ("Validation_Data_Master/b.txt", "1 x2 3"),
                ("Attack_Data_Master/T/c.txt", "1"),
            ],
        );
        let err = read_adfa_zip(&path).expect_err("a non-numeric token must be rejected");
        std::fs::remove_file(&path).ok();
        let msg = err.to_string();
        assert!(
            msg.contains("Validation_Data_Master/b.txt")
                && msg.contains("\"x2\"")
                && msg.contains("position 1"),
            "message: {msg}"
        );
    }

    #[test]
    fn missing_part_and_missing_file_are_errors() {
        let path = write_zip(
            "part",
            &[
                ("Training_Data_Master/a.txt", "1 2"),
                ("Attack_Data_Master/T/c.txt", "1"),
            ],
        );
        let err = read_adfa_zip(&path).expect_err("no validation traces must be an error");
        std::fs::remove_file(&path).ok();
        assert!(
            err.to_string().contains("Validation_Data_Master"),
            "message: {err}"
        );
        let err = read_adfa_zip(Path::new("/nonexistent/adfa.zip")).expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/adfa.zip"),
            "message: {err}"
        );
    }
}
