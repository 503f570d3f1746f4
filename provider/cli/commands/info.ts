// `qcow2 info [-f qcow2] [-U] [--output=human|json] FILE`: the image's facts from its header,
// printed as qemu-img info prints them. Without -U an image a VM is writing is refused (LOCKED).

import { outputFormat, parseArgs, requireQcow2 } from '../args';
import { cliEngine } from '../engine';
import { infoHumanText, infoJsonText } from '../render/info';
import { fail, messageOf } from '../report';
import { out } from '../io';

export const usage = 'info [-f qcow2] [-U] [--output=human|json] FILE';
export const description = 'show image information (reads the header only; never opens the data file)';

export async function run(argv: string[]): Promise<void> {
  const a = parseArgs(argv, { flags: { '-U': 'forceShare', '--force-share': 'forceShare' }, values: { '-f': 'format', '--output': 'output' } });
  requireQcow2(a.values.get('format'));
  const fmt = outputFormat(a.values.get('output'));
  const file = a.positional[0];
  if (file === undefined || a.positional.length > 1) fail(file === undefined ? 'Expecting one image file name' : `Unexpected argument '${a.positional[1]}'`);
  let facts;
  try {
    facts = await cliEngine().info(file, { forceShare: a.flags.has('forceShare') });
  } catch (e) {
    fail(`Could not open '${file}': ${messageOf(e)}`);
  }
  out(fmt === 'json' ? infoJsonText(facts, file) + '\n' : infoHumanText(facts, file));
}
