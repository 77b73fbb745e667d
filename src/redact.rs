//! URLs fit to show: what a URL may carry that is a credential (its user
//! info, its query, its fragment) is left out wherever the crate writes a
//! URL it did not make itself into a log, a report or an error.

use std::borrow::Cow;

/// `text` with every `scheme://…` URL in it shortened to its scheme, host
/// and path: user info (`user:password@`, also of a URL nested in the
/// path, as a proxy's `http://proxy/https://u:p@h/x`), query (`?key=…`)
/// and fragment cut. A URL runs to whitespace, a quote or an angle
/// bracket (user info and queries may hold `,`, `)` or `'` unencoded); a
/// `)`, `,`, `.`, `;` or `'` that ended it in the text is kept after a cut
/// query. Text without `://` is returned as it is.
///
/// Every cut is at an ASCII byte, so the result is valid UTF-8 whatever
/// the text.
pub(crate) fn urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once("://") {
        // The URL's start: the scheme's letters before `://`.
        let scheme_len = before
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            .count();
        let (lead, scheme) = before
            .split_at_checked(before.len() - scheme_len)
            .unwrap_or((before, ""));
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>'))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at_checked(end).unwrap_or((after, ""));
        out.push_str(lead);
        out.push_str(scheme);
        out.push_str("://");
        let (kept, cut) = match url.split_once(['?', '#']) {
            Some((kept, _)) => (kept, true),
            None => (url, false),
        };
        for (i, part) in kept.split("://").enumerate() {
            if i > 0 {
                out.push_str("://");
            }
            out.push_str(without_user_info(part));
        }
        if let Some(closing) = url
            .chars()
            .last()
            .filter(|c| cut && matches!(c, ')' | ',' | '.' | ';' | '\''))
        {
            out.push(closing);
        }
        rest = tail;
    }
    out.push_str(rest);
    out.into()
}

/// A URL's part after `scheme://` without the user info of its authority.
fn without_user_info(url: &str) -> &str {
    let authority_end = url.find('/').unwrap_or(url.len());
    let authority = url.get(..authority_end).unwrap_or_default();
    match authority.rfind('@') {
        Some(at) => url.get(at + 1..).unwrap_or_default(),
        None => url,
    }
}

/// An error as the crate keeps it (reports, logs, error chunks): `msg:
/// source: source`, so "client error (Connect)" says what failed, its URLs
/// shown by [`urls`], at most [`crate::inspect::truncate`]'s length.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    // A client's error may print the URL it was sending to, with the user
    // info or a query key the caller put there.
    if let std::borrow::Cow::Owned(shown) = urls(&text) {
        text = shown;
    }
    crate::inspect::truncate(text)
}

#[cfg(test)]
mod tests {
    use super::urls;
    use proptest::prelude::*;

    #[test]
    fn credentials_are_cut_from_every_url() {
        assert_eq!(
            urls("error sending request for url (http://user:s3cret@host:8080/v1/chat/completions?key=SECRET#frag)"),
            "error sending request for url (http://host:8080/v1/chat/completions)"
        );
        assert_eq!(
            urls("m@https://a:b@h/v1?api-version=1 (eu, key KEY_A)"),
            "m@https://h/v1 (eu, key KEY_A)"
        );
        assert_eq!(
            urls("two: http://x@a/p?q and https://b/q?k=v, done"),
            "two: http://a/p and https://b/q, done"
        );
        // User info and queries with `,`, `)` or `'` in them.
        assert_eq!(urls("(http://u:pa,ss)@h/x)"), "(http://h/x)");
        assert_eq!(urls("http://h/x?k=a,b)c 'x'"), "http://h/x 'x'");
        assert_eq!(urls("'http://u:p'w@h/x?k=v'"), "'http://h/x'");
        // A URL nested in another's path.
        assert_eq!(urls("http://proxy/https://u:p@h/x?k"), "http://proxy/https://h/x");
        // An `@` in the path is not user info.
        assert_eq!(urls("https://h/v1/@me?x"), "https://h/v1/@me");
        assert_eq!(urls("no url here"), "no url here");
        assert_eq!(urls("://?a@b"), "://");
        assert_eq!(urls("é://ü@ß?ö"), "é://ß");
    }

    proptest! {
        #[test]
        fn no_text_panics_and_no_query_survives(text in ".*", secret in "[a-z,)'(]{1,4}[a-z]{12}") {
            let shown = urls(&text);
            let with_secret = format!("{text} https://u:{secret}@h/p?k={secret} {text}");
            let out = urls(&with_secret);
            let (info, query) = (format!(":{secret}@"), format!("k={secret}"));
            prop_assert!(!out.contains(&info), "{}", out);
            prop_assert!(!out.contains(&query), "{}", out);
            if !text.contains("://") {
                prop_assert_eq!(&*shown, text.as_str());
            }
        }
    }
}
