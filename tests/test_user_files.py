"""No file the project did not write is deleted or replaced, and a failed start leaves no
folder behind: decoy user files beside a classifier run (a run, an --overwrite run, refused
starts), a user's file of a run file's name, and starts that fail before training.
(The detector's, the study's and the COCO comparison's decoys are in test_coco.py and
test_study.py, beside the runs those tests train.)"""
import os

import pytest

from gn_mxnet.training import reporting
from gn_mxnet.training.config import TrainConfig
from gn_mxnet.training.loop import LAST_PARAMS, RUN_FILES, train
from gn_mxnet.training.rundir import MANIFEST_NAME, manifest_files

TINY = dict(epochs=1, train_subset=64, val_subset=50, progress=False)

# What a user may keep in a folder: look-alikes of the atomic writer's temporaries (of a run
# file's name too) and of its own files, a sub-folder, a file in it.
DECOYS = {
    '.notes.backup.tmp': b'vim backup',
    '.viminfo.ab12.tmp': b'viminfo',
    '.%s.k3j9.tmp' % LAST_PARAMS: b'looks like a killed write, is not ours',
    '.%s.gn-mxnet.tmp' % reporting.LOG_NAME: b'almost the mark',
    'notes.txt': b'my notes',
    'gn-mxnet-run.json': b'not the manifest',
    os.path.join('mine', 'important.txt'): b'keep',
}


def plant(folder, decoys=DECOYS):
    for name, payload in decoys.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(payload)


def assert_kept(folder, decoys=DECOYS):
    for name, payload in decoys.items():
        with open(os.path.join(folder, name), 'rb') as f:
            assert f.read() == payload, name


def snapshot(folder):
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_a_run_and_an_overwrite_keep_every_user_file(tmp_path):
    out = str(tmp_path)
    plant(out)
    first = train(TrainConfig(out_dir=out, **TINY))
    assert_kept(out)
    # The manifest lists exactly the run's files, and was there before the run's first file.
    assert manifest_files(out) == set(RUN_FILES)
    assert set(os.listdir(out)) == ({n for n in DECOYS if os.sep not in n} | {'mine'}
                                    | {MANIFEST_NAME} | set(first['files']))
    with pytest.raises(FileExistsError, match='already holds a run'):
        train(TrainConfig(out_dir=out, **TINY))
    assert_kept(out)
    assert train(TrainConfig(out_dir=out, overwrite=True, **TINY))['finished']
    assert_kept(out)


@pytest.mark.parametrize('name', [reporting.LOG_NAME, reporting.SUMMARY_NAME, LAST_PARAMS])
@pytest.mark.parametrize('flags', [{}, {'overwrite': True}, {'resume': True}],
                         ids=['new', 'overwrite', 'resume'])
def test_a_users_file_of_a_run_files_name_is_refused_even_with_overwrite(tmp_path, name,
                                                                          flags):
    out = str(tmp_path)
    plant(out, {**DECOYS, name: b'my own file'})
    before = snapshot(out)
    with pytest.raises(FileExistsError) as refused:
        train(TrainConfig(out_dir=out, **TINY, **flags))
    message = str(refused.value)
    assert '\n' not in message and os.path.join(out, name) in message
    assert 'another --out-dir' in message and 'move it' in message
    assert snapshot(out) == before


def test_a_file_another_kind_of_run_does_not_list_is_the_users(tmp_path):
    """A detector's manifest lists coco_log.csv, not log.csv: a log.csv beside it is the
    user's, and a classifier run there is refused, --overwrite or not."""
    from gn_mxnet.detection import engine
    from gn_mxnet.training.rundir import claim_out_dir
    out = str(tmp_path)
    claim_out_dir(out, engine.RUN_FILES, overwrite=False)
    assert reporting.LOG_NAME not in manifest_files(out)
    (tmp_path / reporting.LOG_NAME).write_bytes(b'my log')
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=reporting.LOG_NAME + ' is listed by no gn-mxnet'):
        train(TrainConfig(out_dir=out, overwrite=True, **TINY))
    assert snapshot(out) == before


@pytest.mark.parametrize('changes', [dict(network='no_such_network'),
                                     dict(resume=True),
                                     dict(resume=True, overwrite=True),
                                     dict(dataset='fashion-mnist', data_dir='missing')],
                         ids=['unknown-network', 'resume-nothing', 'resume-and-overwrite',
                              'missing-data'])
def test_a_failed_start_leaves_no_folder(tmp_path, changes):
    out = tmp_path / 'new' / 'run'
    changes = {k: (str(tmp_path / v) if k == 'data_dir' else v) for k, v in changes.items()}
    with pytest.raises((ValueError, KeyError, FileNotFoundError)):
        train(TrainConfig(out_dir=str(out), **{**TINY, **changes}))
    assert os.listdir(tmp_path) == []
