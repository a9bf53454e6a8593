//! Sizes (`512M`, `1G`) and durations (`30s`, `2m`) as people write them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a size: write a number with an optional unit, like 512M, 1G or 65536 (units K, M, G, T are powers of 1024)")]
    Size(String),
    #[error("{0:?} is not a duration: write a number with a unit, like 500ms, 30s, 2m or 1h")]
    Duration(String),
}

/// A byte count. Units are binary (K = 1024); `KB`, `KiB` and `K` all mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Size, UnitError> {
        let err = || UnitError::Size(text.to_string());
        let (number, unit) = split_number(text.trim()).ok_or_else(err)?;
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        let bytes = number * scale as f64;
        if !bytes.is_finite()
            || bytes < 0.0
            || bytes > u64::MAX as f64
            || bytes.fract() != 0.0 && scale == 1
        {
            return Err(err());
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("T", 1 << 40),
            ("G", 1 << 30),
            ("M", 1 << 20),
            ("K", 1 << 10),
        ];
        for (unit, scale) in UNITS {
            if self.0 >= scale && self.0 % scale == 0 {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration. A bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Dur, UnitError> {
        let err = || UnitError::Duration(text.to_string());
        let (number, unit) = split_number(text.trim()).ok_or_else(err)?;
        let seconds = match unit {
            "ms" => number / 1000.0,
            "" | "s" => number,
            "m" | "min" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(err()),
        };
        if !seconds.is_finite() || !(0.0..=366.0 * 86400.0).contains(&seconds) {
            return Err(err());
        }
        Ok(Dur(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else if ms % 60_000 != 0 || ms == 0 {
            write!(f, "{}s", ms / 1000)
        } else if ms % 3_600_000 != 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}h", ms / 3_600_000)
        }
    }
}

fn split_number(text: &str) -> Option<(f64, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..end].parse().ok()?;
    Some((number, text[end..].trim()))
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// TOML accepts sizes as strings (`"512M"`) or plain integers (bytes).
impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(bytes) => Ok(Size(bytes)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// TOML accepts durations as strings (`"30s"`) or plain integers (seconds).
impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(seconds) => Ok(Dur(Duration::from_secs(seconds))),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("512M".parse::<Size>(), Ok(Size(512 << 20)));
        assert_eq!("1G".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("1GiB".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("1.5k".parse::<Size>(), Ok(Size(1536)));
        assert_eq!("65536".parse::<Size>(), Ok(Size(65536)));
        assert_eq!(" 2 MB ".parse::<Size>(), Ok(Size(2 << 20)));
        for bad in ["", "M", "-1G", "12Q", "1.5", "lots", "1e3G"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(Size(1 << 30).to_string(), "1G");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("30s".parse::<Dur>(), Ok(Dur(Duration::from_secs(30))));
        assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
        assert_eq!("500ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(500))));
        assert_eq!("1.5".parse::<Dur>(), Ok(Dur(Duration::from_millis(1500))));
        assert_eq!("1h".parse::<Dur>(), Ok(Dur(Duration::from_secs(3600))));
        for bad in ["", "s", "-3s", "3 days", "forever", "9999999h"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(Dur(Duration::from_secs(120)).to_string(), "2m");
        assert_eq!(Dur(Duration::from_secs(7200)).to_string(), "2h");
        assert_eq!(Dur(Duration::from_millis(2500)).to_string(), "2500ms");
    }
}
