"""pretrained=True: published weights fetched once (a mocked fetch: tests never use the network),
checked against their published hash, converted, cached, and loaded offline afterwards; without
network, one line says what to do."""

import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

import senet
from senet.weights import published
from senet.weights.published import PUBLISHED, Published


def test_torchvision_entries_are_torchvision_own_published_files():
    from torchvision.models import get_model_weights

    for name, entry in PUBLISHED.items():
        if entry.project == "torchvision":
            assert entry.url == get_model_weights(entry.name)["IMAGENET1K_V1"].url, name
        assert len(entry.sha256_prefix) >= 8


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder; resnet18's entry pointing at a file this test publishes."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    source = torchvision.models.resnet18(num_classes=7).eval()
    served = tmp_path / "served.pth"
    torch.save(source.state_dict(), served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    url = f"https://example.invalid/models/resnet18-{digest[:8]}.pth"
    monkeypatch.setitem(PUBLISHED, "resnet18", Published("torchvision", "resnet18", url))
    fetched = []

    def fake_download(url, destination, sha256_prefix):
        fetched.append(url)
        destination.write_bytes(served.read_bytes())

    monkeypatch.setattr(published, "_download", fake_download)
    return source, fetched


def test_published_weights_are_fetched_once_converted_and_compute_the_source_outputs(hub):
    source, fetched = hub
    net = senet.create_model("resnet18", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), source(x), rtol=0, atol=1e-5)
    assert net.pretrained_info.options == {
        "stem_pool": "torchvision"
    }  # torchvision's layout, not the paper's
    again = senet.load_pretrained("resnet18")  # from the converted cache: no second fetch
    assert len(fetched) == 1 and torch.equal(again.fc.weight, net.fc.weight)


def test_without_network_one_line_names_the_file_to_place_and_the_convert_command(hub, monkeypatch):
    def offline(url, destination, sha256_prefix):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(published, "_download", offline)
    with pytest.raises(FileNotFoundError) as error:
        senet.create_model("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message and "name resolution" in message
    assert "place resnet18-" in message and "senet convert --from torchvision" in message


def test_a_placed_file_with_another_hash_is_refused(hub):
    entry = PUBLISHED["resnet18"]
    placed = published.hub_dir() / entry.file_name
    placed.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, placed)
    with pytest.raises(ValueError, match="not the published"):
        senet.create_model("resnet18", pretrained=True)


def test_models_without_published_weights_say_so():
    with pytest.raises(ValueError, match="no published weights are listed for se_resnet20_cifar"):
        senet.create_model("se_resnet20_cifar", pretrained=True)


def test_the_docs_table_lists_every_published_file_under_a_header():
    """docs/weights.md's table of published weights: a header row, then one row per entry of PUBLISHED."""
    lines = (Path(__file__).parents[2] / "docs" / "weights.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `se_resnet50` | [se_resnet50-"))
    header, rule = lines[start - 2], lines[start - 1]
    assert header.startswith("| ") and "---" not in header and rule.startswith("|---")
    rows = []
    for line in lines[start:]:
        if not line.startswith("| `"):
            break
        rows.append(line)
    listed = {}
    for row in rows:
        name, link, prefix = (cell.strip() for cell in row.strip("|").split("|"))
        listed[name.strip("`")] = (link, prefix.strip("`"))
    assert listed.keys() == PUBLISHED.keys()
    for name, (link, prefix) in listed.items():
        entry = PUBLISHED[name]
        assert f"]({entry.url}) ({entry.project})" in link and prefix == entry.sha256_prefix, name
