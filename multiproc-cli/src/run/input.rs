//! Input: the values of each job, streamed.
//!
//! Groups combine as GNU parallel's `:::` groups do: every combination, the
//! first group varying slowest. Sources linked in one group (`:::+`) go
//! side by side, as long as the shortest. Only the first group is read
//! lazily (a million lines on stdin start at once, memory stays flat); the
//! others are read whole, since each of their values is needed again for
//! every value of the first.

use std::fs::File;
use std::io::{self, BufRead, BufReader};

use regex::bytes::Regex;

use super::options::Source;

type Row = Vec<Vec<u8>>;

/// The lines (or NUL-separated records) of a reader, without separators.
struct Lines {
    reader: Box<dyn BufRead + Send>,
    separator: u8,
    name: String,
}

impl Iterator for Lines {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.reader.read_until(self.separator, &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&self.separator) {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(format!("reading {}: {e}", self.name))),
        }
    }
}

type Values = Box<dyn Iterator<Item = Result<Vec<u8>, String>> + Send>;

fn open(source: &Source, separator: u8) -> Result<Values, String> {
    Ok(match source {
        Source::Args(values) => Box::new(values.clone().into_iter().map(Ok)),
        Source::File(path) if path.as_os_str() == "-" => Box::new(Lines {
            reader: Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
            separator,
            name: "standard input".into(),
        }),
        Source::File(path) => {
            let file = File::open(path).map_err(|e| format!("cannot open input file {}: {e}", path.display()))?;
            Box::new(Lines {
                reader: Box::new(BufReader::with_capacity(1 << 16, file)),
                separator,
                name: path.display().to_string(),
            })
        }
    })
}

/// Linked sources side by side: one row per step, ending with the shortest.
struct Zip(Vec<Values>);

impl Iterator for Zip {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut row = Vec::with_capacity(self.0.len());
        for values in &mut self.0 {
            match values.next()? {
                Ok(v) => row.push(v),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(row))
    }
}

/// Every job's values, in job order.
pub struct Inputs {
    first: Zip,
    rest: Vec<Vec<Row>>,
    /// The first group's current row, and where the others stand.
    current: Option<Row>,
    odometer: Vec<usize>,
    colsep: Option<Regex>,
    finished: bool,
    /// The number of jobs, when it is known before running them.
    pub total: Option<u64>,
}

impl Inputs {
    /// Opens every source; a missing file is an error here, before any job.
    pub fn open(groups: &[Vec<Source>], null: bool, colsep: Option<&str>) -> Result<Inputs, String> {
        let separator = if null { 0 } else { b'\n' };
        let colsep = colsep.map(|c| Regex::new(c).map_err(|e| format!("--colsep: {e}"))).transpose()?;
        let mut zips = Vec::new();
        for group in groups {
            zips.push(Zip(group.iter().map(|s| open(s, separator)).collect::<Result<_, _>>()?));
        }
        let mut zips = zips.into_iter();
        let first = zips.next().expect("at least one input group");
        let rest: Vec<Vec<Row>> = zips.map(|z| z.collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
        let total = groups[0]
            .iter()
            .map(|s| match s {
                Source::Args(v) => Some(v.len() as u64),
                Source::File(_) => None,
            })
            .try_fold(u64::MAX, |acc, n| n.map(|n| acc.min(n)))
            .map(|first| rest.iter().fold(first, |acc, g| acc * g.len() as u64));
        Ok(Inputs { first, odometer: vec![0; rest.len()], rest, current: None, colsep, total, finished: false })
    }

    fn split(&self, row: Row) -> Row {
        match &self.colsep {
            None => row,
            Some(re) => row.iter().flat_map(|v| re.split(v).map(<[u8]>::to_vec)).collect(),
        }
    }
}

impl Iterator for Inputs {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.rest.iter().any(Vec::is_empty) {
            return None;
        }
        // Advance the odometer: the last group fastest; when it wraps
        // completely, the first group's next row.
        let wrapped = match self.current {
            None => true,
            Some(_) => {
                let mut k = self.odometer.len();
                loop {
                    if k == 0 {
                        break true;
                    }
                    k -= 1;
                    self.odometer[k] += 1;
                    if self.odometer[k] < self.rest[k].len() {
                        break false;
                    }
                    self.odometer[k] = 0;
                }
            }
        };
        if wrapped {
            match self.first.next() {
                Some(Ok(row)) => self.current = Some(row),
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    // Fused: asked again, the odometer must not turn.
                    self.finished = true;
                    return None;
                }
            }
        }
        let mut row = self.current.clone().expect("set above");
        for (k, &i) in self.odometer.iter().enumerate() {
            row.extend(self.rest[k][i].iter().cloned());
        }
        Some(Ok(self.split(row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Source {
        Source::Args(v.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn all(groups: &[Vec<Source>], colsep: Option<&str>) -> (Vec<String>, Option<u64>) {
        let inputs = Inputs::open(groups, false, colsep).unwrap();
        let total = inputs.total;
        let rows = inputs.map(|r| r.unwrap().iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>().join(" "));
        (rows.collect(), total)
    }

    #[test]
    fn groups_combine_and_link() {
        let (rows, total) = all(&[vec![args(&["a", "b"])], vec![args(&["1", "2"])]], None);
        assert_eq!(rows, ["a 1", "a 2", "b 1", "b 2"]);
        assert_eq!(total, Some(4));
        // Asked again after its end (every slot asks once more), it stays ended.
        let mut inputs = Inputs::open(&[vec![args(&["a"])], vec![args(&["1", "2"])]], false, None).unwrap();
        assert_eq!(inputs.by_ref().count(), 2);
        assert!(inputs.next().is_none() && inputs.next().is_none());
        let (rows, total) = all(&[vec![args(&["a", "b", "c"]), args(&["1", "2"])]], None);
        assert_eq!(rows, ["a 1", "b 2"]);
        assert_eq!(total, Some(2));
        let (rows, _) = all(&[vec![args(&["x"])], vec![args(&[])]], None);
        assert!(rows.is_empty());
        let (rows, _) = all(&[vec![args(&["a,b", "c,,d"])]], Some(","));
        assert_eq!(rows, ["a b", "c  d"]);
    }

    #[test]
    fn files_stream_their_lines() {
        let dir = std::env::temp_dir().join(format!("multiproc-run-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("in");
        std::fs::write(&f, "one\ntwo\n\nlast").unwrap();
        let (rows, total) = all(&[vec![Source::File(f.clone())], vec![args(&["x", "y"])]], None);
        assert_eq!(rows, ["one x", "one y", "two x", "two y", " x", " y", "last x", "last y"]);
        assert_eq!(total, None);
        let missing = Inputs::open(&[vec![Source::File(dir.join("nope"))]], false, None).err().unwrap();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
