//! Kafka's topic-name rules, so a name valid here is valid in Kafka and back.

use crate::ControllerError;

/// Kafka's limit: a topic name must fit in a file name together with a partition suffix.
pub const MAX_TOPIC_NAME_CHARS: usize = 249;

/// Accepts `[a-zA-Z0-9._-]{1,249}` except `.` and `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ControllerError> {
    let invalid = |reason: String| ControllerError::InvalidTopicName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are reserved".to_owned()));
    }
    if name.chars().count() > MAX_TOPIC_NAME_CHARS {
        return Err(invalid(format!(
            "it has {} characters; at most {MAX_TOPIC_NAME_CHARS} are allowed",
            name.chars().count()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(invalid(format!(
            "it contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_valid_names_are_accepted() {
        for name in ["orders", "a", "Orders.v2_eu-west", &"x".repeat(249), "..."] {
            assert!(validate_topic_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn kafka_invalid_names_are_refused_with_a_reason() {
        for name in [
            "",
            ".",
            "..",
            "with space",
            "slash/name",
            "ünïcode",
            &"x".repeat(250),
        ] {
            let err = validate_topic_name(name).expect_err(name);
            assert!(err.to_string().contains("invalid topic name"), "{err}");
        }
    }
}
