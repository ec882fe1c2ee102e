// Build the browser bundles from the installed npm packages, without changing them.
//
// JsSIP 3.13 ships only CommonJS (lib/), no browser bundle, and SIP.js 0.21 only ES
// modules: esbuild bundles each into one script that defines a global, the way JsSIP's own
// build does (format iife, platform browser).
//
//   sipgw/data/phone/vendor/jssip.js   global JsSIP: the phone page shipped in the package,
//                                       and the rig's JsSIP test pages. Kept in git, so
//                                       that `pip install .` from a clean clone serves a
//                                       working phone page without Node.js.
//   tests/browser/build/sip.js         global SIP: the rig's SIP.js test page (git-ignored)
//
// `node build.mjs` writes both. `node build.mjs --check` (what ./scripts/setup runs after
// `npm ci`) writes the test bundle but only compares the shipped one with what it builds
// from package-lock.json's versions, and exits 1 if they differ: the bundle in git must be
// the one these sources make. esbuild's output depends only on its version, the inputs and
// these options (paths in it are relative to this directory), so the comparison is exact.
import { build } from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const check = process.argv.includes('--check');

function version(pkg) {
  return JSON.parse(readFileSync(join(here, 'node_modules', pkg, 'package.json'), 'utf8')).version;
}

function current(file) {
  try {
    return readFileSync(file);
  } catch {
    return null;
  }
}

const bundles = [
  {
    pkg: 'jssip',
    entry: 'node_modules/jssip/lib/JsSIP.js',
    globalName: 'JsSIP',
    outfile: join(repo, 'sipgw', 'data', 'phone', 'vendor', 'jssip.js'),
    shipped: true,
  },
  {
    pkg: 'sip.js',
    entry: 'node_modules/sip.js/lib/index.js',
    globalName: 'SIP',
    outfile: join(here, 'build', 'sip.js'),
    shipped: false,
  },
];

let stale = 0;
for (const b of bundles) {
  const result = await build({
    absWorkingDir: here,
    entryPoints: [b.entry],
    bundle: true,
    format: 'iife',
    globalName: b.globalName,
    platform: 'browser',
    target: 'es2019',
    outfile: b.outfile,
    write: false,
    legalComments: 'eof',
    banner: { js: `/* ${b.pkg} ${version(b.pkg)} from npm, bundled by sipgw's tests/browser/build.mjs */` },
    logLevel: 'warning',
  });
  const [output] = result.outputFiles;
  if (check && b.shipped) {
    const have = current(b.outfile);
    if (have === null || !Buffer.from(output.contents).equals(have)) {
      stale += 1;
      console.error(`${relative(repo, b.outfile)} is not what tests/browser/build.mjs builds from ` +
        `${b.pkg} ${version(b.pkg)}: run \`node tests/browser/build.mjs\` and commit the file`);
    }
  } else {
    mkdirSync(dirname(b.outfile), { recursive: true });
    writeFileSync(b.outfile, output.contents);
  }
}
process.exit(stale ? 1 : 0);
