//! The local stack, checked without a Docker engine.
//!
//! `docker compose up --build` is the README's way to run voxroute with PostgreSQL: two router
//! replicas on one database, a stand-in provider, and nginx in front. CI has no Docker engine,
//! so these tests read `docker-compose.yml`, `Dockerfile` and `deploy/nginx.conf` and check
//! the wiring a broken stack would get wrong: every service exists and is healthchecked; the
//! database is persistent; both replicas are built from this repository, reach the *same*
//! database by its service name, start only once it is healthy, and point the hosted providers
//! at the stand-in (`VOXROUTE_*_URL`); the stand-in runs `voxroute-standin` from the same
//! image; the load balancer publishes 8080, mounts its configuration read-only, and that
//! configuration proxies to both replicas over HTTP/1.1 with the `Upgrade` and `Connection`
//! headers (WebSockets); the image is built in release mode in a separate stage, holds both
//! binaries, and runs as an unprivileged user. `tests/e2e/replicas.rs` runs the same topology
//! (two routers, one PostgreSQL) as plain processes.
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

/// The router replicas of the stack: same image, same database.
const REPLICAS: [&str; 2] = ["voxroute-a", "voxroute-b"];

/// The stand-in provider service, and the port it listens on.
const STANDIN: &str = "standin";
const STANDIN_PORT: &str = "9090";

/// The load balancer service, and its configuration in the repository.
const LB: &str = "lb";
const NGINX_CONF: &str = "deploy/nginx.conf";

/// Every service of the stack.
const SERVICES: [&str; 5] = ["postgres", "voxroute-a", "voxroute-b", STANDIN, LB];

/// Parses the repository's `docker-compose.yml`, with YAML merge keys (`<<: *anchor`) applied
/// as compose applies them.
fn repo_compose() -> Value {
    let text = read_repo_file("docker-compose.yml");
    let mut compose: Value =
        serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML");
    compose
        .apply_merge()
        .expect("docker-compose.yml's merge keys apply");
    compose
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

/// Problems with one router replica `name`: built from `./Dockerfile`, `DATABASE_URL` on the
/// postgres service with its credentials, started after postgres is healthy, the provider
/// keys passed through and the hosted providers' URLs on the stand-in by default, a
/// `/healthz` healthcheck, restarted unless stopped.
fn check_replica(compose: &Value, root: &Path, name: &str) -> Vec<String> {
    let service = &compose["services"][name];
    if service.is_null() {
        return vec![format!("there is no {name} service")];
    }
    let mut problems = Vec::new();
    problems.extend(check_built_here(service, root, name));

    // DATABASE_URL: the postgres service by name, with the credentials postgres is given.
    let env = environment(service);
    match env.get("DATABASE_URL").map(|url| parse_pg_url(url)) {
        None => problems.push(format!("{name} has no DATABASE_URL")),
        Some(Err(why)) => problems.push(format!("{name}'s DATABASE_URL: {why}")),
        Some(Ok(url)) => {
            if url.host != "postgres" {
                problems.push(format!(
                    "{name}'s DATABASE_URL points at host {:?}, not the postgres service",
                    url.host
                ));
            }
            if url.port.is_some_and(|p| p != 5432) {
                problems.push(format!("{name}'s DATABASE_URL uses port {:?}", url.port));
            }
            let pg = environment(&compose["services"]["postgres"]);
            for (part, ours, key) in [
                ("user", &url.user, "POSTGRES_USER"),
                ("password", &url.password, "POSTGRES_PASSWORD"),
                ("database", &url.database, "POSTGRES_DB"),
            ] {
                if pg.get(key) != Some(ours) {
                    problems.push(format!(
                        "{name}'s DATABASE_URL {part} does not match postgres's {key}"
                    ));
                }
            }
        }
    }
    for provider in ["OPENAI", "DEEPGRAM", "ELEVENLABS", "GEMINI"] {
        let key = format!("{provider}_API_KEY");
        if !env.contains_key(&key) {
            problems.push(format!("{name} does not pass {key} through"));
        }
        let url_var = format!("VOXROUTE_{provider}_URL");
        let standin = format!("ws://{STANDIN}:{STANDIN_PORT}");
        match env.get(&url_var) {
            Some(url) if url.contains(&standin) => {}
            Some(url) => problems.push(format!(
                "{name}'s {url_var} {url:?} does not default to the stand-in ({standin})"
            )),
            None => problems.push(format!("{name} has no {url_var} (the stand-in's address)")),
        }
    }

    // depends_on: only the long form can say "healthy".
    if service["depends_on"]["postgres"]["condition"].as_str() != Some("service_healthy") {
        problems.push(format!(
            "{name} does not wait for postgres to be service_healthy"
        ));
    }

    problems.extend(check_healthcheck(name, service, "/healthz"));
    if service["restart"].as_str() != Some("unless-stopped") {
        problems.push(format!("{name} does not restart unless-stopped"));
    }
    problems
}

/// Problems with `service`'s `build:`: it must be this repository's `./Dockerfile`.
fn check_built_here(service: &Value, root: &Path, name: &str) -> Vec<String> {
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
        None => vec![format!("{name} is not built (no `build:`)")],
        Some(context) => {
            let built = root.join(&context).join(&dockerfile);
            let ours = root.join("Dockerfile");
            if built.canonicalize().ok() != ours.canonicalize().ok() || !ours.exists() {
                vec![format!(
                    "{name} builds {context}/{dockerfile}, not this repository's ./Dockerfile"
                )]
            } else {
                Vec::new()
            }
        }
    }
}

/// Problems across the replicas: there are two, they run the same image and use the same
/// database, and none publishes a host port (callers go through the load balancer, and two
/// replicas cannot both publish 8080).
fn check_replicas(compose: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let services: Vec<&Value> = REPLICAS
        .iter()
        .map(|name| &compose["services"][*name])
        .collect();
    if services.iter().any(|s| s.is_null()) {
        return vec![format!(
            "the stack does not have both replicas {REPLICAS:?}"
        )];
    }
    let urls: Vec<Option<String>> = services
        .iter()
        .map(|s| environment(s).get("DATABASE_URL").cloned())
        .collect();
    if urls[0] != urls[1] {
        problems.push(format!(
            "the replicas do not use the same database: {:?} vs {:?}",
            urls[0], urls[1]
        ));
    }
    let images: Vec<Option<&str>> = services.iter().map(|s| s["image"].as_str()).collect();
    if images[0] != images[1] || images[0].is_none() {
        problems.push(format!(
            "the replicas do not run the same image: {:?} vs {:?}",
            images[0], images[1]
        ));
    }
    for (name, service) in REPLICAS.iter().zip(&services) {
        if service["ports"]
            .as_sequence()
            .is_some_and(|p| !p.is_empty())
        {
            problems.push(format!(
                "{name} publishes host ports: callers must go through the load balancer"
            ));
        }
    }
    problems
}

/// Problems with the stand-in: built here, runs `voxroute-standin` listening on every
/// interface at its port, healthchecked on `/healthz`.
fn check_standin(compose: &Value, root: &Path) -> Vec<String> {
    let service = &compose["services"][STANDIN];
    if service.is_null() {
        return vec![format!("there is no {STANDIN} service")];
    }
    let mut problems = check_built_here(service, root, STANDIN);
    let words = |value: &Value| -> Vec<String> {
        match value {
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
            _ => Vec::new(),
        }
    };
    let mut argv = words(&service["entrypoint"]);
    argv.extend(words(&service["command"]));
    if argv.first().map(String::as_str) != Some("voxroute-standin") {
        problems.push(format!(
            "{STANDIN} does not run voxroute-standin (entrypoint + command: {argv:?})"
        ));
    }
    let listen = environment(service)
        .get("VOXROUTE_STANDIN_LISTEN")
        .cloned()
        .or_else(|| {
            argv.iter()
                .position(|w| w == "--listen")
                .and_then(|i| argv.get(i + 1).cloned())
        });
    if listen.as_deref() != Some(&format!("0.0.0.0:{STANDIN_PORT}")) {
        problems.push(format!(
            "{STANDIN} does not listen on 0.0.0.0:{STANDIN_PORT} (got {listen:?})"
        ));
    }
    problems.extend(check_healthcheck(STANDIN, service, "/healthz"));
    problems
}

/// Problems with the load balancer service: an nginx image, 8080 published, this repository's
/// `deploy/nginx.conf` mounted read-only, started once both replicas are healthy,
/// healthchecked through to `/healthz`.
fn check_lb(compose: &Value, root: &Path) -> Vec<String> {
    let service = &compose["services"][LB];
    if service.is_null() {
        return vec![format!("there is no {LB} (load balancer) service")];
    }
    let mut problems = Vec::new();
    let image = service["image"].as_str().unwrap_or_default();
    if !image.starts_with("nginx:") {
        problems.push(format!("{LB} runs image {image:?}, not nginx:<version>"));
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
        problems.push(format!("{LB} does not publish container port 8080"));
    }
    let mounts_conf = service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                let read_only = parts
                    .get(2)
                    .is_some_and(|mode| mode.split(',').any(|m| m == "ro"));
                Some((parts.first()?.to_string(), read_only))
            }
            long => Some((
                scalar(&long["source"])?,
                long["read_only"].as_bool() == Some(true),
            )),
        })
        .find(|(source, _)| {
            root.join(source).canonicalize().ok() == root.join(NGINX_CONF).canonicalize().ok()
        });
    match mounts_conf {
        None => problems.push(format!("{LB} does not mount ./{NGINX_CONF}")),
        Some((_, false)) => problems.push(format!("{LB} mounts ./{NGINX_CONF} writable, not :ro")),
        Some((_, true)) => {}
    }
    for replica in REPLICAS {
        if service["depends_on"][replica]["condition"].as_str() != Some("service_healthy") {
            problems.push(format!(
                "{LB} does not wait for {replica} to be service_healthy"
            ));
        }
    }
    problems.extend(check_healthcheck(LB, service, "/healthz"));
    problems
}

/// An nginx configuration with comments dropped, as `;`/`{`/`}`-separated statements.
fn nginx_statements(text: &str) -> Vec<String> {
    let without_comments: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(['{', '}', ';'])
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Problems with the load balancer's configuration: an upstream with both replicas (by
/// service name, port 8080), `proxy_pass` to it, HTTP/1.1, and the `Upgrade` and `Connection`
/// headers passed on (WebSocket upgrades).
fn check_nginx_conf(text: &str) -> Vec<String> {
    let statements = nginx_statements(text);
    let mut problems = Vec::new();
    let upstream = statements
        .iter()
        .find_map(|s| s.strip_prefix("upstream "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(upstream) = upstream else {
        return vec!["the nginx configuration has no upstream block".to_owned()];
    };
    for replica in REPLICAS {
        let listed = statements.iter().any(|s| {
            s.strip_prefix("server ")
                .and_then(|rest| rest.split_whitespace().next())
                == Some(&format!("{replica}:8080"))
        });
        if !listed {
            problems.push(format!("the nginx upstream does not list {replica}:8080"));
        }
    }
    let has = |wanted: &str| statements.iter().any(|s| s == wanted);
    if !has(&format!("proxy_pass http://{upstream}")) {
        problems.push(format!(
            "nginx does not proxy_pass to the upstream {upstream:?}"
        ));
    }
    if !has("proxy_http_version 1.1") {
        problems.push("nginx does not proxy over HTTP/1.1 (WebSocket upgrades need it)".to_owned());
    }
    if !has("proxy_set_header Upgrade $http_upgrade") {
        problems.push("nginx does not pass the Upgrade header on".to_owned());
    }
    let connection = statements
        .iter()
        .find_map(|s| s.strip_prefix("proxy_set_header Connection "));
    match connection {
        Some("$connection_upgrade") => {
            if !statements
                .iter()
                .any(|s| s.starts_with("map $http_upgrade $connection_upgrade"))
            {
                problems.push("nginx uses $connection_upgrade without mapping it".to_owned());
            }
        }
        Some("upgrade" | "\"upgrade\"" | "Upgrade") => {}
        other => problems.push(format!(
            "nginx does not pass the Connection header as an upgrade (got {other:?})"
        )),
    }
    problems
}

/// Every problem with a compose file, for the repository rooted at `root`.
fn check_compose(compose: &Value, root: &Path) -> Vec<String> {
    let mut problems = check_postgres(compose);
    for replica in REPLICAS {
        problems.extend(check_replica(compose, root, replica));
    }
    problems.extend(check_replicas(compose));
    problems.extend(check_standin(compose, root));
    problems.extend(check_lb(compose, root));
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
    for binary in ["voxroute", "voxroute-standin"] {
        let copied = instructions[last_from..].iter().any(|(op, args)| {
            op == "COPY"
                && args.contains("--from=")
                && args
                    .split_whitespace()
                    .any(|w| w.ends_with(&format!("/{binary}")))
        });
        if !copied {
            problems.push(format!("the final stage does not copy the {binary} binary"));
        }
    }
    problems
}

/// `docker-compose.yml` declares every service of the local stack: postgres, two replicas,
/// the stand-in and the load balancer.
#[test]
fn compose_declares_the_whole_stack() {
    let compose = repo_compose();
    for name in SERVICES {
        assert!(
            !compose["services"][name].is_null(),
            "docker-compose.yml has no {name} service"
        );
    }
}

/// The postgres service runs a postgres image with the user, password and database it needs,
/// keeps its data in a named volume, and has a `pg_isready` healthcheck that the replicas can
/// wait on.
#[test]
fn postgres_service_is_configured_persistent_and_healthchecked() {
    assert_no_problems("the postgres service", check_postgres(&repo_compose()));
}

/// Each replica is built from this repository's Dockerfile, reaches the database at host
/// `postgres` with postgres's own credentials, starts only once postgres is healthy, passes
/// the provider keys through, points the hosted providers at the stand-in and is
/// healthchecked on `/healthz`.
#[test]
fn replicas_are_built_here_and_wired_to_postgres_and_the_standin() {
    let compose = repo_compose();
    for replica in REPLICAS {
        assert_no_problems(replica, check_replica(&compose, &repo_root(), replica));
    }
}

/// Both replicas run the same image on the same database, and neither publishes a port of its
/// own.
#[test]
fn two_replicas_share_one_database() {
    assert_no_problems("the replicas", check_replicas(&repo_compose()));
}

/// The stand-in runs `voxroute-standin` from this repository's image, on every interface,
/// healthchecked.
#[test]
fn standin_runs_from_the_same_image() {
    assert_no_problems(
        "the stand-in service",
        check_standin(&repo_compose(), &repo_root()),
    );
}

/// The load balancer publishes 8080, mounts `deploy/nginx.conf` read-only, waits for both
/// replicas, is healthchecked; its configuration proxies WebSocket upgrades to both replicas.
#[test]
fn load_balancer_proxies_websockets_to_both_replicas() {
    assert_no_problems("the lb service", check_lb(&repo_compose(), &repo_root()));
    assert_no_problems(NGINX_CONF, check_nginx_conf(&read_repo_file(NGINX_CONF)));
}

/// The Dockerfile builds the release binaries in a build stage and runs them from a separate
/// stage as an unprivileged user, exposing 8080; the image holds the router and the stand-in.
#[test]
fn dockerfile_is_multi_stage_release_and_non_root() {
    assert_no_problems(
        "the Dockerfile",
        check_dockerfile(&read_repo_file("Dockerfile")),
    );
}

/// The checks can fail: the same compose file with any service's healthcheck removed is
/// rejected, and for the right reason.
#[test]
fn compose_without_a_healthcheck_is_rejected() {
    assert_no_problems(
        "docker-compose.yml",
        check_compose(&repo_compose(), &repo_root()),
    );
    for name in SERVICES {
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

/// The checks can fail: a replica pointed at localhost, or started without waiting for a
/// healthy database, is rejected; so is a replica on another database than its sibling.
#[test]
fn compose_with_broken_database_wiring_is_rejected() {
    let mut compose = repo_compose();
    let url = compose["services"]["voxroute-a"]["environment"]["DATABASE_URL"]
        .as_str()
        .expect("DATABASE_URL is written as a mapping entry")
        .replace("@postgres:", "@localhost:");
    compose["services"]["voxroute-a"]["environment"]["DATABASE_URL"] = Value::String(url);
    compose["services"]["voxroute-a"]["depends_on"] =
        serde_yaml_ng::from_str("[postgres]").expect("valid YAML");
    let problems = check_compose(&compose, &repo_root());
    assert_some_problem_mentions(&problems, "not the postgres service");
    assert_some_problem_mentions(&problems, "service_healthy");
    assert_some_problem_mentions(&problems, "not use the same database");

    let mut compose = repo_compose();
    compose["services"]["voxroute-b"]["environment"]["VOXROUTE_OPENAI_URL"] =
        Value::String("wss://api.openai.com".into());
    let problems = check_compose(&compose, &repo_root());
    assert_some_problem_mentions(&problems, "VOXROUTE_OPENAI_URL");
}

/// The checks can fail: an nginx configuration that drops the upgrade headers, speaks
/// HTTP/1.0 upstream, or leaves a replica out is rejected for each.
#[test]
fn load_balancer_without_websocket_upgrade_is_rejected() {
    let good = read_repo_file(NGINX_CONF);
    let no_upgrade = good
        .replace("proxy_set_header Upgrade $http_upgrade;", "")
        .replace("proxy_set_header Connection $connection_upgrade;", "")
        .replace("proxy_http_version 1.1;", "");
    let problems = check_nginx_conf(&no_upgrade);
    assert_some_problem_mentions(&problems, "Upgrade header");
    assert_some_problem_mentions(&problems, "Connection header");
    assert_some_problem_mentions(&problems, "HTTP/1.1");
    let one_replica = good.replace("server voxroute-b:8080", "server voxroute-a:8081");
    assert_some_problem_mentions(&check_nginx_conf(&one_replica), "voxroute-b:8080");

    let mut compose = repo_compose();
    compose["services"][LB]["volumes"] =
        serde_yaml_ng::from_str("[\"./deploy/nginx.conf:/etc/nginx/conf.d/default.conf\"]")
            .expect("valid YAML");
    assert_some_problem_mentions(&check_lb(&compose, &repo_root()), "not :ro");
}

/// The checks can fail: a single-stage Dockerfile that builds in debug mode and runs as root
/// is rejected on all three counts.
#[test]
fn single_stage_root_dockerfile_is_rejected() {
    let problems = check_dockerfile(
        "FROM rust:1.95-bookworm\nCOPY . .\nRUN cargo build -p voxroute\nUSER root\nCMD [\"serve\"]\n",
    );
    assert_some_problem_mentions(&problems, "voxroute-standin binary");
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
