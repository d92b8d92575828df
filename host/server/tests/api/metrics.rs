//! `/metrics`: the fleet in Prometheus' text format, for a token that may read.

use super::*;

#[tokio::test]
async fn metrics_count_the_fleet_for_prometheus() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 3).await;
        let a = e.call("GET", "/metrics", None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);

        // Two terminals poll; a download fails on one of them while verifying.
        let all = e.ok("GET", "/api/v1/groups", ADMIN, None).await[0]["id"].as_i64().unwrap();
        e.ok("POST", "/api/v1/tasks", ADMIN, Some(json!({"kind": "download", "package_id": f.package.id, "group_id": all})))
            .await;
        for (device, token) in &f.devices[..2] {
            let handed = actions(&e, token).await;
            if *device == f.devices[0].0 {
                report(&e, token, &handed[0], *device, "verify", FeedbackState::Failed, "checksum").await;
            }
        }
        let viewer = e.token("grafana", Role::Viewer).await;
        let a = e.call("GET", "/metrics", Some(&viewer), None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/plain; version=0.0.4");
        let text = String::from_utf8(a.bytes).unwrap();
        for line in [
            "posup_devices{device_type=\"test\",state=\"online\"} 2",
            "posup_devices{device_type=\"test\",state=\"offline\"} 1",
            "posup_tasks{state=\"Running\"} 1",
            "posup_updates_ended{device_type=\"test\",kind=\"download\",outcome=\"failed\",step=\"verify\"} 1",
            "posup_notifications_pending 0",
            "posup_poll_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    })
    .await;
}
