use super::*;

#[test]
fn generated_tokens_have_prefix_length_and_valid_checksum() {
    for _ in 0..200 {
        let token = TokenSecret::generate();
        let text = token.expose();
        assert_eq!(text.len(), TOKEN_LEN);
        assert_eq!(TOKEN_LEN, 53);
        assert!(text.starts_with("chi_"));
        assert!(text[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(check_format(text), Ok(()));
        assert_eq!(token.display_prefix(), &text[..12]);
    }
}

#[test]
fn tokens_are_distinct() {
    let a = TokenSecret::generate();
    let b = TokenSecret::generate();
    assert_ne!(a, b);
}

#[test]
fn every_single_character_change_is_caught() {
    let token = TokenSecret::generate();
    let text = token.expose();
    for idx in 4..text.len() {
        let mut bytes = text.as_bytes().to_vec();
        bytes[idx] = if bytes[idx] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(bytes).unwrap();
        assert_eq!(
            check_format(&changed),
            Err(FormatError::Checksum),
            "position {idx}"
        );
    }
}

#[test]
fn malformed_shapes_are_rejected() {
    let text = TokenSecret::generate().expose().to_owned();
    assert_eq!(check_format(""), Err(FormatError::Malformed));
    assert_eq!(check_format(&text[..52]), Err(FormatError::Malformed));
    assert_eq!(
        check_format(&format!("{text}x")),
        Err(FormatError::Malformed)
    );
    assert_eq!(
        check_format(&text.replacen("chi_", "cha_", 1)),
        Err(FormatError::Malformed)
    );
    assert_eq!(
        check_format(&text.replacen(&text[10..11], "-", 1)),
        Err(FormatError::Malformed)
    );
    assert_eq!(
        check_format(&text.replacen(&text[10..11], "é", 1)),
        Err(FormatError::Malformed)
    );
}

#[test]
fn checksum_is_fixed_width_base62() {
    assert_eq!(checksum(b""), "000000");
    let sum = checksum(b"chi_hello");
    assert_eq!(sum.len(), 6);
    // u32::MAX in base62 is "4gfFC3": the widest value still fits six digits.
    let mut value = u32::MAX;
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(value % 62) as usize];
        value /= 62;
    }
    assert_eq!(&digits, b"4gfFC3");
}

#[test]
fn secret_never_prints() {
    let token = TokenSecret::generate();
    assert_eq!(format!("{token}"), "[redacted]");
    assert!(!format!("{token:?}").contains(token.expose()));
}

#[test]
fn token_shapes_are_found_in_text() {
    let token = TokenSecret::generate();
    assert!(contains_token_shape(&format!(
        "here: {} ok",
        token.expose()
    )));
    assert!(!contains_token_shape("chi_short"));
    assert!(!contains_token_shape("no token here"));
}
