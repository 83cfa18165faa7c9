//! Durations in `weir.toml`: humantime text (`"30s"`, `"5m"`), at most 100 years, and above
//! zero where zero means nothing sensible.

use std::time::Duration;

pub(in crate::config) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s, false)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a duration of the file, at most [`crate::MAX_DURATION`] and, if `nonzero`,
/// above zero; the error names the text and the range.
pub(in crate::config) fn parse_duration(s: &str, nonzero: bool) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); e.g. \"30s\""))?;
    if d > crate::MAX_DURATION {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    if nonzero && d.is_zero() {
        return Err(format!("`{s}` is zero; give a duration above 0"));
    }
    Ok(d)
}

pub(in crate::config) mod opt_positive_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s, true)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

pub(in crate::config) mod positive_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s, true).map_err(serde::de::Error::custom)
    }
}
