"""Agent call for `pio-remote test -r`: build one suite on the agent's synced project.

    test.build  {project, env, suite}  -> DATA (PlatformIO's output)
                -> {exit_code, source, files: [{name, size, sha256}], ini}

The build is ``pio test -e ENV -f SUITE --without-uploading --without-testing``
on the copy that ``project.sync`` keeps (its platformio.ini sanitised as for
``run -r``). Its images go into the content-addressed cache, so that each
board's ``test.run`` flashes them exactly as if the client had sent them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import trio

from pio_remote.agent import gate
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import cache, projects, uploader, workspace
from pio_remote.project import INI, ProjectError
from pio_remote.wire import transfer


def _store(root: Path, path: Path, name: str | None = None) -> transfer.FileEntry:
    """Put a build output into the cache under its SHA-256 (read-only, by rename)."""
    entry = transfer.hash_file(path, name)
    if not cache.has(root, entry.sha256, entry.size):
        tmp = cache.temp_path(root)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o400)
            os.replace(tmp, root / entry.sha256)
        finally:
            tmp.unlink(missing_ok=True)
    return entry


@handler("test.build")
async def test_build(ctx: CallContext, project: str, env: str, suite: str) -> dict[str, Any]:
    env, suite = gate.env(env), gate.suite(suite)
    workspace.check_remote_build(ctx)
    pio = uploader.find_platformio()
    if pio is None:
        raise workspace.no_platformio(ctx)
    project_dir = projects.project_path(ctx, project)
    client_ini = project_dir / projects.CLIENT_INI
    if not gate.regular_file(project_dir, (projects.CLIENT_INI,)):
        raise CallFailed("not_synced", "sync the project (project.sync) before building")
    await projects.checked_ini(ctx, project_dir, env)  # one it refused: say why, now
    argv = [pio, "test", "-d", str(project_dir), "-e", env, "-f", suite]
    argv += ["--without-uploading", "--without-testing"]
    await ctx.call.send_event({"building": f"{env}:{suite}", "argv": argv})
    what = f"the remote build of {env}:{suite}"
    # The build output, and the artifacts it puts in the cache, count against the quota.
    async with projects.in_use(ctx, project_dir) as book:
        code = await workspace.run_sandboxed(ctx, what, argv, project_dir)
        if code != 0:
            return {"exit_code": code}
        try:
            values = workspace.client_config(gate.read_text(project_dir, (INI,)), project_dir / INI)
            art = projects.checked_artifacts(project_dir, values, env)
            if not gate.regular_file(project_dir, (projects.CLIENT_INI,)):
                raise CallFailed("bad_project", f"{projects.CLIENT_INI} changed during the build")
        except (ProjectError, FileNotFoundError) as exc:
            raise CallFailed("bad_project", str(exc)) from None
        # checked_artifacts and regular_file above read these as regular files inside
        # the project, never through a link the build left.
        root = workspace.cache_dir(ctx)
        files = [await trio.to_thread.run_sync(_store, root, p) for p in art.files]
        ini = await trio.to_thread.run_sync(_store, root, client_ini, INI)
        for e in [*files, ini]:
            book.blob_added(workspace.client_id(ctx), e.sha256, e.size)
    return {
        "exit_code": 0,
        "source": art.source.name,
        "files": [e.to_json() for e in files],
        "ini": ini.sha256,
    }
