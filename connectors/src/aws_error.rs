//! What an AWS REST-JSON service's error answer says (Identity Center's portal and SSO OIDC,
//! Lambda's API): its type, from the `x-amzn-ErrorType` header (up to a `:`, after which services
//! may put a documentation URL) or else the body's type field, and its message.
//!
//! Guarantees: reading never fails (an answer that is not JSON has no type or message but the
//! header's); only those two fields are taken from the body, so nothing else an answer holds is
//! ever quoted in an error.

/// An error answer's type and message, what of them it gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// `ResourceNotFoundException`, `UnauthorizedException`, `invalid_grant`, …
    pub kind: Option<String>,
    /// The service's words.
    pub message: Option<String>,
}

impl ErrorAnswer {
    /// The answer of `headers` and `body`; the body's fields are `type_field` (else `__type`) and
    /// `message_field` (else `message` or `Message`).
    pub fn read(headers: &reqwest::header::HeaderMap, body: &[u8], type_field: &str, message_field: &str) -> Self {
        let header = headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field =
            |names: &[&str]| names.iter().find_map(|n| json.get(n).and_then(|v| v.as_str()).map(str::to_string));
        let kind = header.map(|t| t.split(':').next().unwrap_or_default().to_string());
        ErrorAnswer {
            kind: kind.or_else(|| field(&[type_field, "__type"])),
            message: field(&[message_field, "message", "Message"]),
        }
    }

    /// `": <type>: <message>"`, of what it has (empty when neither).
    pub fn suffix(&self) -> String {
        [&self.kind, &self.message].into_iter().flatten().map(|part| format!(": {part}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(error_type: Option<&str>) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = error_type {
            headers.insert("x-amzn-ErrorType", t.parse().unwrap_or_else(|e| panic!("{e}")));
        }
        headers
    }

    #[test]
    fn the_header_names_the_type_and_the_body_the_message() {
        let lambda = br#"{"Type":"User","Message":"Function not found: arn:aws:lambda:eu-west-1:1:function:f"}"#;
        let read = ErrorAnswer::read(
            &headers(Some("ResourceNotFoundException:http://internal/")),
            lambda,
            "__type",
            "Message",
        );
        assert_eq!(read.kind.as_deref(), Some("ResourceNotFoundException"));
        assert_eq!(
            read.suffix(),
            ": ResourceNotFoundException: Function not found: arn:aws:lambda:eu-west-1:1:function:f"
        );
        // SSO OIDC names both in its body.
        let oidc = br#"{"error":"invalid_grant","error_description":"Invalid refresh token provided"}"#;
        let read = ErrorAnswer::read(&headers(None), oidc, "error", "error_description");
        assert_eq!(read.suffix(), ": invalid_grant: Invalid refresh token provided");
        // Neither, or not JSON: what there is.
        assert_eq!(ErrorAnswer::read(&headers(None), b"<html>", "__type", "message").suffix(), "");
        assert_eq!(ErrorAnswer::read(&headers(Some("Throttling")), b"", "__type", "message").suffix(), ": Throttling");
    }
}
