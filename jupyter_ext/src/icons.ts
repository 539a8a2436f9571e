/** The sidebar's own icon. */
import { LabIcon } from '@jupyterlab/ui-components';

/** A gateway arch over three cluster nodes (drawn for this project). */
const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 21V9.5C3 5.4 7 2 12 2s9 3.4 9 7.5V21h-3V9.7C18 7.2 15.3 5 12 5S6 7.2 6 9.7V21z"/>
    <circle cx="12" cy="11" r="2.2"/>
    <circle cx="9" cy="17" r="2.2"/>
    <circle cx="15" cy="17" r="2.2"/>
  </g>
</svg>`;

export const gatewayIcon = new LabIcon({
  name: 'dask-gateway-jupyterlab:icon',
  svgstr: ICON_SVG
});
