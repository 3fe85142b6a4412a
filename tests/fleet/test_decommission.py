def test_probe(fleet):
    b = fleet.upload()
    fleet.register("cam-1")
    r = fleet.client.post("/api/v1/rollouts", json={"bundle_id": b["id"]}, headers=fleet.admin)
    assert r.status_code == 201
    r = fleet.client.delete("/api/v1/devices/cam-1", headers=fleet.admin)
    print(r.status_code, r.text)
