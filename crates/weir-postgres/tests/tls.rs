//! TLS to the real PostgreSQL (Debian's, which serves its `ssl-cert-snakeoil` certificate,
//! made for `localhost`): `sslmode` as libpq means it, checked from the server's side in
//! `pg_stat_ssl`.

use weir_postgres::{PgOptions, PgStore};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn base(host: &str) -> String {
    std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
        .replace("127.0.0.1", host)
}

/// Connects a store as `url` says, tagged with an application name; returns whether the
/// server sees its connection encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let app = format!("weir-tls-{}", uuid::Uuid::new_v4().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let opts = PgOptions::from_url(&format!("{url}{sep}application_name={app}"))
        .map_err(|e| e.to_string())?;
    let store = PgStore::connect(opts).await.map_err(|e| e.to_string())?;
    let plain = base("127.0.0.1");
    let ssl = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&plain, postgres::NoTls).unwrap();
        c.query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.application_name = $1",
            &[&app],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, bool>(0))
        .collect::<Vec<bool>>()
    })
    .await
    .unwrap();
    drop(store);
    assert!(!ssl.is_empty(), "the store's connection is not listed");
    Ok(ssl.iter().all(|s| *s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_encrypts_and_verifies_as_libpq_does() {
    let url = base("127.0.0.1");
    assert_eq!(encrypted(&format!("{url}?sslmode=require")).await, Ok(true));
    assert_eq!(
        encrypted(&format!("{url}?sslmode=disable")).await,
        Ok(false)
    );
    // The default, `prefer`, encrypts where the server offers it.
    assert_eq!(encrypted(&url).await, Ok(true));
    // The chain against the server's own certificate as root; any name.
    assert_eq!(
        encrypted(&format!("{url}?sslmode=verify-ca&sslrootcert={SNAKEOIL}")).await,
        Ok(true)
    );
    // The name too: the certificate is for `localhost`, not 127.0.0.1.
    let e = encrypted(&format!("{url}?sslmode=verify-full&sslrootcert={SNAKEOIL}"))
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let local = base("localhost");
    assert_eq!(
        encrypted(&format!(
            "{local}?sslmode=verify-full&sslrootcert={SNAKEOIL}"
        ))
        .await,
        Ok(true)
    );
}
