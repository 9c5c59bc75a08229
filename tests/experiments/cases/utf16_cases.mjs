// Non-ASCII hash cases for growthbook.json, computed by GrowthBook's JavaScript SDK itself:
// hashFnv32a and hash are copied from packages/sdk-js/src/util.ts (MIT licence), types removed.
// Run: node tests/experiments/cases/utf16_cases.mjs  ->  [seed, value, version, hash, fnv1a32(value)]
function hashFnv32a(str) {
  let hval = 0x811c9dc5;
  const l = str.length;
  for (let i = 0; i < l; i++) {
    hval ^= str.charCodeAt(i);
    hval += (hval << 1) + (hval << 4) + (hval << 7) + (hval << 8) + (hval << 24);
  }
  return hval >>> 0;
}
function hash(seed, value, version) {
  if (version === 2) return (hashFnv32a(hashFnv32a(seed + value) + "") % 10000) / 10000;
  if (version === 1) return (hashFnv32a(value + seed) % 1000) / 1000;
  return null;
}
const cases = [
  ["seed", "é", 2], ["seed", "日本語", 2], ["seed", "😀", 2], ["", "user-😀-1", 2],
  ["checkout", "Zoë", 1], ["", "😀", 1], ["ß", "Straße", 2], ["exp-1", "\u0000", 2],
  ["exp-1", "𝕏𝕐", 1], ["key", "a".repeat(300), 2], ["κλειδί", "μονάδα", 2],
];
console.log(JSON.stringify(cases.map(([s, v, ver]) => [s, v, ver, hash(s, v, ver), hashFnv32a(v)])));
