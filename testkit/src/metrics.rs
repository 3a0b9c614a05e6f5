//! Reading a sidecar's `/metrics` (the OpenMetrics text format) in tests.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// The text as served.
    pub text: String,
}

impl Scrape {
    /// Parses the text format: `# ` lines are metadata, every other line a
    /// sample with optional labels (values without `,`, `"` or `\`, as
    /// lockstep's are).
    pub fn parse(text: &str) -> Result<Scrape> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("no value in {line:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("value of {line:?} is not a number"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let Some(inner) = rest.strip_suffix('}') else {
                        bail!("unterminated labels in {line:?}");
                    };
                    let mut labels = BTreeMap::new();
                    for pair in inner.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .with_context(|| format!("bad label {pair:?} in {line:?}"))?;
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .with_context(|| format!("unquoted label {pair:?} in {line:?}"))?;
                        labels.insert(k.to_string(), v.to_string());
                    }
                    (name.to_string(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Ok(Scrape {
            samples,
            text: text.to_string(),
        })
    }

    /// The value of the sample named `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let s =
            Scrape::parse("# TYPE x gauge\nx 1\ny_total{link=\"l\",setup=\"hot\"} 2.5\n# EOF\n")
                .expect("parse");
        assert_eq!(s.get("x", &[]), Some(1.0));
        assert_eq!(s.get("y_total", &[("setup", "hot")]), Some(2.5));
        assert_eq!(s.get("y_total", &[("setup", "warm")]), None);
        assert!(Scrape::parse("x{a=\"b\" 1").is_err());
        assert!(Scrape::parse("x one").is_err());
    }
}
