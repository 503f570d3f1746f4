// `qcow2 check [-f qcow2|raw] [-q] [-U] [--output=human|json] FILE`: QEMU's refcount and L1/L2
// consistency check, read-only; exit 0 clean, 1 could not check, 2 corruptions, 3 leaks only.

import { parseReadArgs } from '../args';
import { engineFor } from '../engine';
import { checkExitCode, checkHumanText, checkJson } from '../render/check';
import { Exit, fail, messageOf, report } from '../report';
import { out, err } from '../io';

export const usage = 'check [-f qcow2|raw] [-q] [-U] [--output=human|json] FILE';
export const description = 'check refcount and L1/L2 consistency; exit 0 clean, 1 could not check, 2 corrupt, 3 leaks';

export async function run(argv: string[]): Promise<void> {
  const { file, image, path, display, output: fmt, forceShare, quiet, format } = parseReadArgs(argv, { quiet: true });
  const engine = engineFor(image);
  let r;
  try {
    // qemu-img opens the image first, then finds that raw has no check (exit 63). A qcow2 image
    // info cannot read (a snapshot table too big) is still checked: check opens it as QEMU's
    // BDRV_O_CHECK does, and reports what it finds.
    const probed = format === 'qcow2' ? 'qcow2' : await engine.info(path, { forceShare, format: format ?? 'probe' }).then((i) => i.format, () => undefined);
    if (probed === 'raw') {
      report('This image format does not support checks');
      throw new Exit(63);
    }
    r = await engine.check(path, { forceShare });
  } catch (e) {
    if (e instanceof Exit) throw e;
    fail(`Could not open '${file}': ${messageOf(e)}`);
  }
  if (r.failed) {
    report(r.failed.message);
    report(`Check failed: ${r.failed.cause}`);
    throw new Exit(1);
  }
  for (const m of r.messages) err(m + '\n');
  const code = checkExitCode(r);
  if (!quiet) out(fmt === 'json' ? JSON.stringify(checkJson(r, display), null, 4) + '\n' : checkHumanText(r));
  if (code === 1) report('Check failed');
  if (code !== 0) throw new Exit(code);
}
