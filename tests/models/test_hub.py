"""The Hub's offline mode where it cannot be reached: its cache at once, no request retried."""
import os
import socket

import pytest
from huggingface_hub import constants, hf_hub_download

from fsa_seg.models.hub import hub_offline_if_unreachable


def test_an_unreachable_hub_serves_its_cache_at_once_and_is_sent_nothing(tmp_path,
                                                                         unresolvable_names):
    commit = 'a' * 40          # huggingface_hub's cache: refs/main names the snapshot
    repo = tmp_path / 'models--org--tiny'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    cached = repo / 'snapshots' / commit / 'weights.bin'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'w')
    with hub_offline_if_unreachable() as host:
        assert host == 'huggingface.co' and constants.HF_HUB_OFFLINE
        assert hf_hub_download('org/tiny', 'weights.bin', cache_dir=tmp_path) == str(cached)
        with pytest.raises(OSError):      # not cached: an error at once
            hf_hub_download('org/tiny', 'other.bin', cache_dir=tmp_path)
    # the one look-up is the probe itself: no request followed it (each would have been
    # retried 5 times, 23 s of waiting)
    assert unresolvable_names == ['huggingface.co']
    assert not constants.HF_HUB_OFFLINE and 'HF_HUB_OFFLINE' not in os.environ
    with pytest.raises(KeyError), hub_offline_if_unreachable():
        raise KeyError('an error inside')
    assert not constants.HF_HUB_OFFLINE   # restored however the block ends


def test_the_hub_stays_online_where_it_or_the_proxy_answers_or_as_the_user_set_it(
        monkeypatch, unresolvable_names):
    probed = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def create_connection(address, timeout=None):
        probed.append(address)
        return Connection()
    monkeypatch.setattr(socket, 'create_connection', create_connection)
    monkeypatch.setenv('HTTPS_PROXY', 'http://proxy.example:3128')
    with hub_offline_if_unreachable() as host:
        assert host is None and not constants.HF_HUB_OFFLINE
    assert probed == [('proxy.example', 3128)]     # behind a proxy, the proxy is asked
    monkeypatch.delenv('HTTPS_PROXY')
    with hub_offline_if_unreachable() as host:
        assert host is None and not constants.HF_HUB_OFFLINE
    assert probed[1:] == [('huggingface.co', 443)]
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)   # the user's HF_HUB_OFFLINE=1
    with hub_offline_if_unreachable() as host:
        assert host is None
    assert constants.HF_HUB_OFFLINE and len(probed) == 2     # nothing asked
    assert unresolvable_names == []
