//! TLS and mTLS listeners: round trips, refused clients, certificate rotation.

use std::time::Duration;

use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tyk_dispatcher::config::AddressList;

use crate::helpers::*;

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::try_from(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn tls_config(pki: &TestPki, mtls: bool) -> tyk_dispatcher::Config {
    config_with(|c| {
        c.tls_listen = AddressList::of(&["127.0.0.1:0"]);
        c.tls_cert = Some(pki.server_cert.clone());
        c.tls_key = Some(pki.server_key.clone());
        c.tls_client_ca = mtls.then(|| pki.client_ca.clone());
        c.tls_reload_interval_secs = 1;
    })
}

fn tls_addr(app: &TestApp) -> std::net::SocketAddr {
    // Plaintext listeners come first; the TLS one is last.
    match app.grpc.last().expect("listeners") {
        tyk_dispatcher::BoundAddr::Tcp(addr) => *addr,
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn a_tls_client_round_trips_and_plaintext_still_works() {
    rustls_provider();
    let pki = make_pki();
    let app = spawn_app(tls_config(&pki, false)).await;
    let request = seed_object().encode_to_vec();
    let channel = tls_channel(tls_addr(&app), &pki.ca_pem, None)
        .await
        .expect("TLS connects");
    assert!(call_raw(channel, DISPATCH, request.clone()).await.unwrap() == request.as_slice());
    assert!(
        call_raw(app.channel().await, DISPATCH, request.clone())
            .await
            .unwrap()
            == request.as_slice()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn under_mtls_a_client_without_a_certificate_is_refused() {
    rustls_provider();
    let pki = make_pki();
    let app = spawn_app(tls_config(&pki, true)).await;
    let request = seed_object().encode_to_vec();
    let identity = (pki.client_cert_pem.as_str(), pki.client_key_pem.as_str());
    let channel = tls_channel(tls_addr(&app), &pki.ca_pem, Some(identity))
        .await
        .expect("mTLS connects");
    assert!(call_raw(channel, DISPATCH, request.clone()).await.unwrap() == request.as_slice());
    // TLS 1.3 reports a missing client certificate after the handshake: the call fails either way.
    let refused = match tls_channel(tls_addr(&app), &pki.ca_pem, None).await {
        Err(_) => true,
        Ok(channel) => call_raw(channel, DISPATCH, request.clone()).await.is_err(),
    };
    assert!(
        refused,
        "a client without a certificate must not get an answer"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_the_next_connection() {
    rustls_provider();
    let pki = make_pki();
    let app = spawn_app(tls_config(&pki, false)).await;
    let request = seed_object().encode_to_vec();
    let old = tls_channel(tls_addr(&app), &pki.ca_pem, None)
        .await
        .expect("old CA works");
    assert!(
        call_raw(old.clone(), DISPATCH, request.clone())
            .await
            .is_ok()
    );
    // A new CA and certificate replace the files, as cert-manager rotates a Secret.
    let (new_ca, _, _) = write_server_cert(pki.dir.path(), "ca-2");
    let mut connected = false;
    for _ in 0..50 {
        if let Ok(channel) = tls_channel(tls_addr(&app), &new_ca, None).await
            && call_raw(channel, DISPATCH, request.clone()).await.is_ok()
        {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "the new certificate was never served");
    assert!(
        tls_channel(tls_addr(&app), &pki.ca_pem, None)
            .await
            .is_err(),
        "new connections no longer get the old one"
    );
    // The established connection keeps working.
    assert!(call_raw(old, DISPATCH, request).await.is_ok());
    app.shutdown().await;
}

#[tokio::test]
async fn missing_or_bad_certificate_files_fail_the_build_with_the_path() {
    let pki = make_pki();
    let mut config = tls_config(&pki, false);
    config.tls_cert = Some(pki.dir.path().join("missing.pem"));
    let err = tyk_dispatcher::App::build(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    let mut config = tls_config(&pki, false);
    std::fs::write(pki.dir.path().join("junk.pem"), "not a certificate").unwrap();
    config.tls_cert = Some(pki.dir.path().join("junk.pem"));
    let err = tyk_dispatcher::App::build(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.pem") && err.contains("no CERTIFICATE"),
        "{err}"
    );
}

fn rustls_provider() {
    // tonic's client needs the process-wide provider, which the app installs when built; these
    // clients may connect before or without one. Ring, as the app would choose; losing a race
    // to the app's own install is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
