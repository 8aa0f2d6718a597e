//! `im-gateway check`: the shipped routes.yaml passes; each broken fixture is rejected with a
//! message naming the route (or upstream) and the field.

use std::path::PathBuf;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn shipped_routes_file_is_valid() {
    let summary =
        im_gateway::cli::check(&repo("routes.yaml"), None).expect("shipped routes.yaml is valid");
    assert!(summary.contains("OK"), "{summary}");
}

#[test]
fn broken_fixtures_are_rejected_with_route_and_field() {
    for (file, expected) in [
        ("unknown_key.yaml", &["route `echo`", "colour"][..]),
        (
            "undefined_upstream.yaml",
            &[
                "route `echo`",
                "field `upstream`",
                "`nowhere` is not defined",
            ],
        ),
        (
            "duplicate_path.yaml",
            &["route `echo_again`", "field `http.path`"],
        ),
        ("duplicate_cmd.yaml", &["route `echo_again`", "field `cmd`"]),
        (
            "bad_duration.yaml",
            &["upstreams.echo.timeout", "unknown unit"],
        ),
        (
            "unknown_method.yaml",
            &["route `echo`", "field `grpc`", "method `Shout`"],
        ),
    ] {
        let err =
            im_gateway::cli::check(&repo(&format!("tests/fixtures/{file}")), None).expect_err(file);
        for needle in expected {
            assert!(
                err.contains(needle),
                "{file}: expected `{needle}` in:\n{err}"
            );
        }
    }
}
