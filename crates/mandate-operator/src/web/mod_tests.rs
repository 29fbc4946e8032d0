use super::*;

#[test]
fn only_request_ids_survive_as_fragments() {
    assert_eq!(
        clean_fragment(Some("#apr-0193a2b4-1c2d")),
        "apr-0193a2b4-1c2d"
    );
    for bad in ["a\"b", "x<y", "javascript:alert(1)", "a/b", "a b"] {
        assert_eq!(clean_fragment(Some(bad)), "", "{bad}");
    }
    assert_eq!(clean_fragment(Some(&"a".repeat(101))), "");
    assert_eq!(clean_fragment(None), "");
}

#[test]
fn the_page_has_no_inline_script_or_style() {
    let page = INDEX_HTML;
    assert!(!page.contains("<script>"), "inline script");
    assert!(!page.contains("<style"), "inline style");
    assert!(!page.contains(" style="), "inline style attribute");
    assert!(
        !page
            .split_whitespace()
            .any(|t| t.starts_with("on") && t.contains('=')),
        "inline event handler"
    );
    assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
}
