//! The local stack, checked without a Docker engine.
//!
//! `docker compose up --build` is the README's way to run voxroute with PostgreSQL. CI has no
//! Docker engine, so these tests read `docker-compose.yml` and `Dockerfile` and check the
//! wiring a broken stack would get wrong: both services exist, the database is healthchecked
//! and persistent, the router is built from this repository, finds the database by its service
//! name, starts only once it is healthy, publishes 8080 and is healthchecked itself; the image
//! is built in release mode in a separate stage and runs as an unprivileged user.
//!
//! The checks are plain functions returning every problem they find, so that the negative
//! tests can prove that each check can fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// The repository root (the root package's manifest directory).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a file at the repository root.
fn read_repo_file(name: &str) -> String {
    let path = repo_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Parses the repository's `docker-compose.yml`.
fn repo_compose() -> Value {
    let text = read_repo_file("docker-compose.yml");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML")
}

/// Fails the test with every problem found, one per line.
fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what} has problems:\n- {}",
        problems.join("\n- ")
    );
}

/// Asserts that some problem mentions `needle`.
fn assert_some_problem_mentions(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:?}"
    );
}

/// A compose file's view of a scalar: strings as they are, numbers and booleans printed.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's `environment`, in either of compose's forms (`KEY: value` or `- KEY=value`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The parts of a `postgres://user:password@host:port/db` URL that the wiring depends on.
#[derive(Debug, PartialEq)]
struct PgUrl {
    user: String,
    password: String,
    host: String,
    port: Option<u16>,
    database: String,
}

/// Parses a PostgreSQL URL, or says why it cannot.
fn parse_pg_url(url: &str) -> Result<PgUrl, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("{url:?} is not a postgres:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = match hostport.split_once(':') {
        Some((host, port)) => {
            let port = port
                .parse()
                .map_err(|_| format!("{url:?} has a bad port {port:?}"))?;
            (host, Some(port))
        }
        None => (hostport, None),
    };
    let database = path.split('?').next().unwrap_or_default();
    Ok(PgUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port,
        database: database.to_owned(),
    })
}

/// Problems with a service's healthcheck: it must exist, be enabled and run a command that
/// contains `probe`.
fn check_healthcheck(name: &str, service: &Value, probe: &str) -> Vec<String> {
    let healthcheck = &service["healthcheck"];
    if healthcheck.is_null() {
        return vec![format!("service {name} has no healthcheck")];
    }
    if healthcheck["disable"].as_bool() == Some(true) {
        return vec![format!("service {name} has its healthcheck disabled")];
    }
    let command = match &healthcheck["test"] {
        Value::String(s) => s.clone(),
        Value::Sequence(words) => words
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    if command.trim().is_empty() || command.trim() == "NONE" {
        return vec![format!("service {name}'s healthcheck has no test command")];
    }
    if !command.contains(probe) {
        return vec![format!(
            "service {name}'s healthcheck {command:?} does not run {probe:?}"
        )];
    }
    Vec::new()
}

/// Problems with the `postgres` service: the image, the env it needs, a named volume on its
/// data directory, and a `pg_isready` healthcheck.
fn check_postgres(compose: &Value) -> Vec<String> {
    let service = &compose["services"]["postgres"];
    if service.is_null() {
        return vec!["there is no postgres service".to_owned()];
    }
    let mut problems = Vec::new();
    let image = service["image"].as_str().unwrap_or_default();
    if !image.starts_with("postgres:") {
        problems.push(format!(
            "postgres runs image {image:?}, not postgres:<version>"
        ));
    }
    let env = environment(service);
    for key in ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"] {
        if env.get(key).is_none_or(|v| v.is_empty()) {
            problems.push(format!("postgres has no {key} in its environment"));
        }
    }
    let data_volume = service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            Value::String(short) => {
                let mut parts = short.split(':');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            }
            long => Some((scalar(&long["source"])?, scalar(&long["target"])?)),
        })
        .find(|(_, target)| target == "/var/lib/postgresql/data");
    match data_volume {
        None => problems.push("postgres has no volume on /var/lib/postgresql/data".to_owned()),
        Some((source, _)) if compose["volumes"].get(source.as_str()).is_none() => problems.push(
            format!("postgres's data volume {source:?} is not a named volume under `volumes:`"),
        ),
        Some(_) => {}
    }
    problems.extend(check_healthcheck("postgres", service, "pg_isready"));
    problems
}

/// Problems with the `voxroute` service: built from `./Dockerfile`, `DATABASE_URL` on the
/// postgres service with its credentials, started after postgres is healthy, 8080 published,
/// a `/healthz` healthcheck and the provider keys passed through.
fn check_voxroute(compose: &Value, root: &Path) -> Vec<String> {
    let service = &compose["services"]["voxroute"];
    if service.is_null() {
        return vec!["there is no voxroute service".to_owned()];
    }
    let mut problems = Vec::new();

    // build: "." or {context: ".", dockerfile: "Dockerfile"} must be this repository's file.
    let (context, dockerfile) = match &service["build"] {
        Value::String(context) => (Some(context.clone()), "Dockerfile".to_owned()),
        Value::Mapping(_) => (
            service["build"]["context"].as_str().map(str::to_owned),
            service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile")
                .to_owned(),
        ),
        _ => (None, String::new()),
    };
    match context {
        None => problems.push("voxroute is not built (no `build:`)".to_owned()),
        Some(context) => {
            let built = root.join(&context).join(&dockerfile);
            let ours = root.join("Dockerfile");
            if built.canonicalize().ok() != ours.canonicalize().ok() || !ours.exists() {
                problems.push(format!(
                    "voxroute builds {context}/{dockerfile}, not this repository's ./Dockerfile"
                ));
            }
        }
    }

    // DATABASE_URL: the postgres service by name, with the credentials postgres is given.
    let env = environment(service);
    match env.get("DATABASE_URL").map(|url| parse_pg_url(url)) {
        None => problems.push("voxroute has no DATABASE_URL".to_owned()),
        Some(Err(why)) => problems.push(format!("voxroute's DATABASE_URL: {why}")),
        Some(Ok(url)) => {
            if url.host != "postgres" {
                problems.push(format!(
                    "voxroute's DATABASE_URL points at host {:?}, not the postgres service",
                    url.host
                ));
            }
            if url.port.is_some_and(|p| p != 5432) {
                problems.push(format!("voxroute's DATABASE_URL uses port {:?}", url.port));
            }
            let pg = environment(&compose["services"]["postgres"]);
            for (part, ours, key) in [
                ("user", &url.user, "POSTGRES_USER"),
                ("password", &url.password, "POSTGRES_PASSWORD"),
                ("database", &url.database, "POSTGRES_DB"),
            ] {
                if pg.get(key) != Some(ours) {
                    problems.push(format!(
                        "voxroute's DATABASE_URL {part} does not match postgres's {key}"
                    ));
                }
            }
        }
    }
    for key in [
        "OPENAI_API_KEY",
        "DEEPGRAM_API_KEY",
        "ELEVENLABS_API_KEY",
        "GEMINI_API_KEY",
    ] {
        if !env.contains_key(key) {
            problems.push(format!("voxroute does not pass {key} through"));
        }
    }

    // depends_on: only the long form can say "healthy".
    if service["depends_on"]["postgres"]["condition"].as_str() != Some("service_healthy") {
        problems.push("voxroute does not wait for postgres to be service_healthy".to_owned());
    }

    // ports: short ("8080:8080", "127.0.0.1:8080:8080/tcp") or long ({target, published}).
    let publishes_8080 =
        service["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|port| match port {
                Value::String(short) => {
                    let short = short.split('/').next().unwrap_or_default();
                    let mut parts = short.rsplitn(2, ':');
                    let target = parts.next();
                    target == Some("8080") && parts.next().is_some()
                }
                long => {
                    scalar(&long["target"]).as_deref() == Some("8080")
                        && !long["published"].is_null()
                }
            });
    if !publishes_8080 {
        problems.push("voxroute does not publish container port 8080".to_owned());
    }

    problems.extend(check_healthcheck("voxroute", service, "/healthz"));
    if service["restart"].as_str() != Some("unless-stopped") {
        problems.push("voxroute does not restart unless-stopped".to_owned());
    }
    problems
}

/// Every problem with a compose file, for the repository rooted at `root`.
fn check_compose(compose: &Value, root: &Path) -> Vec<String> {
    let mut problems = check_postgres(compose);
    problems.extend(check_voxroute(compose, root));
    problems
}

/// A Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped, continued lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// Every problem with a Dockerfile: it must have a build stage and a run stage, build with
/// `cargo build --release`, and run as a user other than root in its final stage.
fn check_dockerfile(text: &str) -> Vec<String> {
    let instructions = dockerfile_instructions(text);
    let mut problems = Vec::new();
    let stages = instructions.iter().filter(|(op, _)| op == "FROM").count();
    if stages < 2 {
        problems.push(format!(
            "the Dockerfile has {stages} stage(s), not a build stage and a run stage"
        ));
    }
    let builds_release = instructions.iter().any(|(op, args)| {
        op == "RUN" && args.contains("cargo build") && args.contains("--release")
    });
    if !builds_release {
        problems.push("the Dockerfile does not run `cargo build --release`".to_owned());
    }
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap_or(0);
    let final_user = instructions[last_from..]
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, user)| user.split(':').next().unwrap_or_default().to_owned());
    match final_user.as_deref() {
        None => problems.push("the final stage has no USER: it would run as root".to_owned()),
        Some("root" | "0") => problems.push("the final stage runs as USER root".to_owned()),
        Some(_) => {}
    }
    let exposes_8080 = instructions[last_from..]
        .iter()
        .any(|(op, args)| op == "EXPOSE" && args.split_whitespace().any(|p| p == "8080"));
    if !exposes_8080 {
        problems.push("the final stage does not EXPOSE 8080".to_owned());
    }
    problems
}

/// `docker-compose.yml` declares both services of the local stack, `postgres` and `voxroute`.
#[test]
fn compose_declares_postgres_and_voxroute() {
    let compose = repo_compose();
    for name in ["postgres", "voxroute"] {
        assert!(
            !compose["services"][name].is_null(),
            "docker-compose.yml has no {name} service"
        );
    }
}

/// The postgres service runs a postgres image with the user, password and database it needs,
/// keeps its data in a named volume, and has a `pg_isready` healthcheck that voxroute can wait
/// on.
#[test]
fn postgres_service_is_configured_persistent_and_healthchecked() {
    assert_no_problems("the postgres service", check_postgres(&repo_compose()));
}

/// The voxroute service is built from this repository's Dockerfile, reaches the database at
/// host `postgres` with postgres's own credentials, starts only once postgres is healthy,
/// publishes 8080, passes the provider keys through and is healthchecked on `/healthz`.
#[test]
fn voxroute_service_is_built_here_and_wired_to_postgres() {
    assert_no_problems(
        "the voxroute service",
        check_voxroute(&repo_compose(), &repo_root()),
    );
}

/// The Dockerfile builds the release binary in a build stage and runs it from a separate
/// stage as an unprivileged user, exposing 8080.
#[test]
fn dockerfile_is_multi_stage_release_and_non_root() {
    assert_no_problems(
        "the Dockerfile",
        check_dockerfile(&read_repo_file("Dockerfile")),
    );
}

/// The checks can fail: the same compose file with either healthcheck removed is rejected,
/// and for the right reason.
#[test]
fn compose_without_a_healthcheck_is_rejected() {
    assert_no_problems(
        "docker-compose.yml",
        check_compose(&repo_compose(), &repo_root()),
    );
    for name in ["postgres", "voxroute"] {
        let mut compose = repo_compose();
        compose["services"][name]
            .as_mapping_mut()
            .expect("the service is a mapping")
            .remove("healthcheck")
            .expect("the service had a healthcheck");
        let problems = check_compose(&compose, &repo_root());
        assert_some_problem_mentions(&problems, &format!("service {name} has no healthcheck"));
    }
}

/// The checks can fail: a router pointed at localhost, or started without waiting for a
/// healthy database, is rejected.
#[test]
fn compose_with_broken_database_wiring_is_rejected() {
    let mut compose = repo_compose();
    let url = compose["services"]["voxroute"]["environment"]["DATABASE_URL"]
        .as_str()
        .expect("DATABASE_URL is written as a mapping entry")
        .replace("@postgres:", "@localhost:");
    compose["services"]["voxroute"]["environment"]["DATABASE_URL"] = Value::String(url);
    compose["services"]["voxroute"]["depends_on"] =
        serde_yaml_ng::from_str("[postgres]").expect("valid YAML");
    let problems = check_compose(&compose, &repo_root());
    assert_some_problem_mentions(&problems, "not the postgres service");
    assert_some_problem_mentions(&problems, "service_healthy");
}

/// The checks can fail: a single-stage Dockerfile that builds in debug mode and runs as root
/// is rejected on all three counts.
#[test]
fn single_stage_root_dockerfile_is_rejected() {
    let problems = check_dockerfile(
        "FROM rust:1.95-bookworm\nCOPY . .\nRUN cargo build -p voxroute\nUSER root\nCMD [\"serve\"]\n",
    );
    assert_some_problem_mentions(&problems, "1 stage(s)");
    assert_some_problem_mentions(&problems, "--release");
    assert_some_problem_mentions(&problems, "USER root");
}

/// The URL parser the wiring checks rely on reads user, password, host, port and database.
#[test]
fn pg_url_parts_are_read() {
    assert_eq!(
        parse_pg_url("postgres://u:p@postgres:5432/db?sslmode=disable"),
        Ok(PgUrl {
            user: "u".into(),
            password: "p".into(),
            host: "postgres".into(),
            port: Some(5432),
            database: "db".into(),
        })
    );
    assert!(parse_pg_url("sqlite://voxroute.db").is_err());
}
