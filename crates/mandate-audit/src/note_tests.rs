use super::*;

/// The example key and note of the Go `sumdb/note` documentation, which
/// the C2SP signed-note spec follows: Ed25519 is deterministic, so our
/// signature must be byte-identical.
const GO_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n";
const GO_NOTE_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

/// The example of the C2SP signed-note specification.
const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn signs_byte_for_byte_like_the_reference() -> TestResult {
    let signer = CheckpointSigner::from_private_key(GO_SKEY)?;
    assert_eq!(signer.verifier().to_string(), GO_VKEY);
    assert_eq!(signer.to_private_key(), GO_SKEY);
    let note = signer.sign(GO_TEXT);
    assert_eq!(note, format!("{GO_TEXT}\n{GO_NOTE_SIG}"));
    let verifier: NoteVerifier = GO_VKEY.parse()?;
    assert_eq!(verifier.open(&note)?, GO_TEXT);
    Ok(())
}

#[test]
fn opens_the_spec_example_and_refuses_changes() -> TestResult {
    let verifier: NoteVerifier = SPEC_VKEY.parse()?;
    assert_eq!(verifier.open(SPEC_NOTE)?, "This is an example message.\n");
    let edited = SPEC_NOTE.replace("example message", "exemplary message");
    assert_eq!(
        verifier.open(&edited),
        Err(NoteError::BadSignature("example.com/foo".into()))
    );
    let other: NoteVerifier = GO_VKEY.parse()?;
    assert_eq!(
        other.open(SPEC_NOTE),
        Err(NoteError::NotSigned("PeterNeumann".into()))
    );
    assert!(verifier.open("no signature\n").is_err());
    Ok(())
}

#[test]
fn checkpoints_round_trip_and_bind_their_origin() -> TestResult {
    let signer = CheckpointSigner::generate(None)?;
    assert!(signer.name().starts_with("mandate/audit/"));
    let root = crate::merkle::leaf_hash(b"x");
    let note = signer.sign_checkpoint(42, &root);
    let verifier = signer.verifier();
    let cp = verifier.open_checkpoint(&note)?;
    assert_eq!(cp.size, 42);
    assert_eq!(cp.root, root);
    assert_eq!(cp.origin, signer.name());
    assert!(note.starts_with(&format!("{}\n42\n{}\n\n", signer.name(), root.to_base64())));
    // Another log's key signing the same size and root is not this log.
    let other = CheckpointSigner::generate(Some("elsewhere"))?;
    assert!(
        verifier
            .open_checkpoint(&other.sign_checkpoint(42, &root))
            .is_err()
    );
    let forged = note.replace("\n42\n", "\n43\n");
    assert!(verifier.open_checkpoint(&forged).is_err());
    Ok(())
}

#[test]
fn checkpoint_bodies_are_strict() {
    let root = crate::merkle::empty_root().to_base64();
    assert!(Checkpoint::parse(&format!("log\n7\n{root}\n")).is_ok());
    assert!(Checkpoint::parse(&format!("log\n07\n{root}\n")).is_err());
    assert!(Checkpoint::parse(&format!("log\n-7\n{root}\n")).is_err());
    assert!(Checkpoint::parse("log\n7\nnot-base64\n").is_err());
    assert!(Checkpoint::parse(&format!("\n7\n{root}\n")).is_err());
}

#[test]
fn key_file_is_created_once_and_private() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit-checkpoint.key");
    let a = CheckpointSigner::load_or_generate(&path, None)?;
    let b = CheckpointSigner::load_or_generate(&path, None)?;
    assert_eq!(a.verifier(), b.verifier());
    let public = NoteVerifier::read(&public_key_path(&path))?;
    assert_eq!(public, a.verifier());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    Ok(())
}
