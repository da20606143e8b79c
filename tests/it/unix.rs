//! Unix-socket listeners: round trips and hand-over by rename.

use prost::Message;
use tyk_dispatcher::config::AddressList;

use crate::helpers::*;

#[tokio::test]
async fn a_unix_socket_serves_with_authority_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatcher.sock");
    let app = spawn_app(config_with(|c| {
        c.listen = Some(AddressList(vec![format!("unix://{}", path.display())]));
    }))
    .await;
    let request = seed_object().encode_to_vec();
    let channel = connect_unix(&path).await.expect("connects");
    assert!(call_raw(channel, DISPATCH, request.clone()).await.unwrap() == request.as_slice());
    app.shutdown().await;
    assert!(!path.exists(), "the socket is removed on exit");
}

#[tokio::test]
async fn a_second_instance_takes_the_socket_over_and_the_first_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatcher.sock");
    let config = || {
        config_with(|c| {
            c.listen = Some(AddressList(vec![format!("unix://{}", path.display())]));
            c.drain_delay_secs = 5;
        })
    };
    let first = spawn_app(config()).await;
    let request = seed_object().encode_to_vec();
    let old = connect_unix(&path).await.expect("connects to the first");
    assert!(
        call_raw(old.clone(), DISPATCH, request.clone())
            .await
            .is_ok()
    );
    let second = spawn_app(config()).await;
    // New connections reach the second instance.
    let new = connect_unix(&path).await.expect("connects to the second");
    assert!(
        call_raw(new.clone(), DISPATCH, request.clone())
            .await
            .is_ok()
    );
    assert_eq!(second.lifecycle.open_connections(), 1);
    // The first drains, its client still answered until it goes.
    first.stop.cancel();
    assert!(
        call_raw(old.clone(), DISPATCH, request.clone())
            .await
            .is_ok()
    );
    drop(old);
    tokio::time::timeout(std::time::Duration::from_secs(10), first.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        path.exists(),
        "the first instance left the second's socket alone"
    );
    assert!(call_raw(new, DISPATCH, request).await.is_ok());
    second.shutdown().await;
    assert!(!path.exists());
}
